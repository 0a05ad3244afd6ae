from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from studyplatform import api, views


class FaviconView(RedirectView):
    """Browsers ask for /favicon.ico on every page that names no icon (the admin, JSON, images)."""

    permanent = True

    def get_redirect_url(self, *args, **kwargs):
        return static("favicon.svg")


urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", FaviconView.as_view(), name="favicon"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", views.api_docs, name="api-docs"),
    path("api/", include(api.urlpatterns)),
    path("s/<slug:slug>/", views.entry, name="study-entry"),
    path("s/<slug:slug>/invite/<str:token>/", views.invite_entry, name="study-invite"),
    path("s/<slug:slug>/run/", views.run, name="study-run"),
    path("s/<slug:slug>/withdraw/", views.withdraw, name="study-withdraw"),
    path("i/<str:token>", views.stimulus_image, name="stimulus-image"),
]

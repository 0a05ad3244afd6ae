from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from studyplatform import api, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
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

"""Who may use the staff API: staff users holding Django's model permission for what a request touches, the same
permissions the admin checks.

Reads need `view_<model>`, creating `add_`, changing `change_` and deleting `delete_`. Actions that are not plain
reads or writes of their own model list what they need in the view's `action_permissions`, and raw Prolific ids
need `studyplatform.export_raw_ids` besides.
"""

from rest_framework.permissions import DjangoModelPermissions

RAW_IDS_PERMISSION = "studyplatform.export_raw_ids"
VIEW = "%(app_label)s.view_%(model_name)s"


class StaffModelPermissions(DjangoModelPermissions):
    perms_map = {**DjangoModelPermissions.perms_map, "GET": [VIEW], "HEAD": [VIEW], "OPTIONS": [VIEW]}

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False
        needed = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if needed is not None:
            return user.has_perms(needed)
        return super().has_permission(request, view)

from django.contrib import admin, messages
from django.utils.html import format_html

from jobs import runner
from jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("kind", "status", "progress_bar", "message", "created_at", "started_at", "finished_at")
    list_filter = ("status", "kind")
    search_fields = ("id", "kind", "message")
    readonly_fields = [f.name for f in Job._meta.fields] + ["progress_bar"]
    actions = ["cancel_jobs"]

    @admin.display(description="progress")
    def progress_bar(self, job):
        return format_html(
            '<progress max="100" value="{}" style="width:8em"></progress> {}%', round(job.progress), round(job.progress)
        )

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        for job in queryset:
            runner.request_cancel(job)
        self.message_user(request, f"Cancel requested for {queryset.count()} job(s).", messages.SUCCESS)

    def changelist_view(self, request, extra_context=None):
        # Listing the jobs is when a researcher looks for lost ones: fail them here rather than wait for a worker.
        runner.reap_stale_jobs()
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request):
        return False

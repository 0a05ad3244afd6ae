"""Helpers for tests that post admin pages as a browser would."""


def form_as_shown(page):
    """The POST data of the admin page as it was rendered: the study form and every inline formset."""

    def fields(form):
        data = {}
        for name in form.fields:
            value = form[name].value()
            if value is None or value is False or name.endswith("_image"):
                continue
            data[form.add_prefix(name)] = "on" if value is True else value
        return data

    data = fields(page.context["adminform"].form)
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update({formset.management_form.add_prefix(k): v for k, v in formset.management_form.initial.items()})
        for form in formset.forms:
            data.update(fields(form))
    return data

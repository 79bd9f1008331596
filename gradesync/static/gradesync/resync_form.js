'use strict';
// The resync form's course, learner and activity pickers: Django's select2 autocompletes, each request
// carrying the institution, course and learner chosen above it, so the server answers only within them.
{
    const $ = django.jQuery;
    const chosen = (id) => { const element = document.getElementById(id); return element ? element.value : ""; };
    const clear = (ids) => ids.forEach((id) => {
        const element = document.getElementById(id);
        if (element && element.value) { $(element).val(null).trigger("change"); }
    });

    // select2's combobox is labelled by its current value, empty until a choice: name it after the field's label.
    function name(element) {
        const label = document.querySelector(`label[for="${element.id}"]`);
        const combobox = element.nextElementSibling && element.nextElementSibling.querySelector(".select2-selection");
        if (label && combobox) {
            const text = label.textContent.replace(/:\s*$/, "").trim();
            combobox.setAttribute("aria-label", text);
            combobox.removeAttribute("aria-labelledby");
            const shown = combobox.querySelector(".select2-selection__rendered");  // its textbox role needs a name too
            if (shown) { shown.setAttribute("aria-label", text); }
        }
    }

    function start(element) {
        $(element).select2({
            ajax: {
                data: (params) => ({
                    term: params.term,
                    page: params.page,
                    app_label: element.dataset.appLabel,
                    model_name: element.dataset.modelName,
                    field_name: element.dataset.fieldName,
                    institution: chosen("id_institution"),
                    course: element.id === "id_course" ? "" : chosen("id_course"),
                    lti_user: element.id === "id_course" ? chosen("id_lti_user") : "",
                }),
            },
        });
    }

    $(function () {
        $("select.resync-autocomplete").each((i, element) => { start(element); name(element); });
        // Another institution: its courses, learners and activities are others.
        $("#id_institution").on("change", () => clear(["id_course", "id_lti_user", "id_activity_key"]));
        // Another course: the activity chosen was the other course's.
        $("#id_course").on("change", () => clear(["id_activity_key"]));
    });
}

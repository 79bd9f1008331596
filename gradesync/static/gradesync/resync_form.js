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
        $("select.resync-autocomplete").each((i, element) => start(element));
        // Another institution: its courses, learners and activities are others.
        $("#id_institution").on("change", () => clear(["id_course", "id_lti_user", "id_activity_key"]));
        // Another course: the activity chosen was the other course's.
        $("#id_course").on("change", () => clear(["id_activity_key"]));
    });
}

// Trial page behaviour: response time, sliders that must be moved, and one submission per click. The page's
// questions say what they are (data-kind) and what to ask for while unanswered (data-missing), so nothing here
// knows a question by name.
(function () {
  "use strict";
  var form = document.getElementById("trial-form");
  if (!form) return;
  var shownAt = performance.now();
  var images = Array.prototype.slice.call(form.querySelectorAll("img.xray"));
  var pending = images.filter(function (img) { return !img.complete; }).length;
  images.forEach(function (img) {
    if (!img.complete) {
      img.addEventListener("load", function () {
        pending -= 1;
        if (pending === 0) shownAt = performance.now();
      });
    }
  });

  Array.prototype.forEach.call(form.querySelectorAll("fieldset[data-kind=slider]"), function (fieldset) {
    var slider = fieldset.querySelector("input[type=range]");
    var moved = fieldset.querySelector("input[data-moved]");
    var output = document.getElementById(slider.id + "-value");
    var sliderHint = document.getElementById(slider.id + "-hint");
    slider.classList.add("untouched");
    slider.addEventListener("input", function () {
      moved.value = "1";
      slider.classList.remove("untouched");
      output.hidden = false;
      output.textContent = slider.value;
      sliderHint.textContent = "Your rating: " + slider.value;
    });
  });

  var hint = document.getElementById("submit-hint");
  var sent = false;
  // Whether a question of each kind has its answer; a kind not listed here is answered once one of its inputs is
  // checked or holds text.
  function anyInput(fieldset) {
    return Array.prototype.some.call(fieldset.querySelectorAll("input, textarea, select"), function (input) {
      if (input.type === "radio" || input.type === "checkbox") return input.checked;
      return input.type !== "hidden" && input.value.trim() !== "";
    });
  }
  var answered = {
    choice: function (fieldset) { return fieldset.querySelector("input:checked") !== null; },
    scale: function (fieldset) { return fieldset.querySelector("input:checked") !== null; },
    checklist: function (fieldset) { return fieldset.querySelector("input:checked") !== null; },
    slider: function (fieldset) { return fieldset.querySelector("input[data-moved]").value === "1"; }
  };
  function missingAnswers() {
    var missing = [];
    Array.prototype.forEach.call(form.querySelectorAll("fieldset[data-missing]"), function (fieldset) {
      if (!(answered[fieldset.dataset.kind] || anyInput)(fieldset)) missing.push(fieldset.dataset.missing);
    });
    return missing.length ? "Please " + missing.join(" and ") + "." : "";
  }
  // A hint once shown follows the answer: it shrinks as parts are given and is gone once nothing is missing.
  function updateHint() {
    if (hint.textContent) hint.textContent = missingAnswers();
  }
  form.addEventListener("change", updateHint);
  form.addEventListener("input", updateHint);
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    var missing = missingAnswers();
    if (missing) {
      event.preventDefault();
      hint.textContent = missing;
      return;
    }
    var elapsed = String(Math.max(0, Math.round(performance.now() - shownAt)));
    Array.prototype.forEach.call(form.querySelectorAll("input[data-kind=elapsed]"), function (input) {
      input.value = elapsed;
    });
    sent = true;
    document.getElementById("submit-answer").setAttribute("aria-disabled", "true");
  });
})();

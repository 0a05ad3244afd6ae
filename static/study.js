// Trial page behaviour: response time, the slider that must be moved, and one submission per click.
(function () {
  "use strict";
  var form = document.getElementById("trial-form");
  if (!form) return;
  var phase = form.dataset.phase;
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

  var slider = document.getElementById("realness");
  var moved = document.getElementById("slider_moved");
  var output = document.getElementById("realness-value");
  if (slider) {
    slider.classList.add("untouched");
    slider.addEventListener("input", function () {
      moved.value = "1";
      slider.classList.remove("untouched");
      output.hidden = false;
      output.textContent = slider.value;
      document.getElementById("slider-hint").textContent = "Your rating: " + slider.value;
    });
  }

  var hint = document.getElementById("submit-hint");
  var sent = false;
  function missingAnswers() {
    var missing = [];
    if (!form.querySelector("input[name=diagnosis]:checked")) missing.push("choose a diagnosis");
    if (phase === "block1" && moved.value !== "1") missing.push("move the realness slider");
    if ((phase === "pre" || phase === "post") && !form.querySelector("input[name=confidence]:checked")) {
      missing.push("choose your confidence");
    }
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
    document.getElementById("rt_ms").value = String(Math.max(0, Math.round(performance.now() - shownAt)));
    sent = true;
    document.getElementById("submit-answer").setAttribute("aria-disabled", "true");
  });
})();

// The review editor's keyboard: Enter moves to the next field (instead of submitting), Esc puts the
// draft's value back, Ctrl+Enter saves the correction, Ctrl+Shift+A approves. Changed fields are marked.
(function () {
  "use strict";
  var form = document.getElementById("review-form");
  if (!form) return;
  var inputs = Array.prototype.slice.call(form.querySelectorAll("input[data-draft], textarea[data-draft]"));

  function mark(input) {
    var row = input.closest("tr");
    if (row) row.classList.toggle("changed", input.value.trim() !== input.dataset.draft.trim());
  }

  function press(id) {
    var button = document.getElementById(id);
    if (button) form.requestSubmit(button);
  }

  inputs.forEach(function (input, index) {
    input.addEventListener("input", function () { mark(input); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        var next = inputs[index + 1] || document.getElementById("save-correction");
        next.focus();
        if (next.select) next.select();
      } else if (event.key === "Escape") {
        input.value = input.dataset.draft;
        mark(input);
      }
    });
  });

  document.addEventListener("keydown", function (event) {
    var ctrl = event.ctrlKey || event.metaKey;
    if (ctrl && event.key === "Enter") {
      event.preventDefault();
      press("save-correction");
    } else if (ctrl && event.shiftKey && (event.key === "A" || event.key === "a")) {
      event.preventDefault();
      press("approve");
    }
  });
})();

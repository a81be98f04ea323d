/* News QA: progressive enhancement only; every page works without it. Loaded from 'self' (the CSP allows no
   inline script). Copies citations, scrolls a cited span into view, keeps empty options out of the URL. */
(function () {
  "use strict";

  function say(button, text) {
    var status = document.getElementById(button.getAttribute("aria-describedby"));
    if (!status) return;
    status.textContent = text;
    window.clearTimeout(status.timer);
    status.timer = window.setTimeout(function () { status.textContent = ""; }, 4000);
  }

  // without the asynchronous clipboard (a page served over plain http to another host): select the text and
  // copy it the old way, or leave it selected for Ctrl+C
  function copyBySelection(area, button) {
    var details = area.closest("details");
    if (details) details.open = true;
    area.focus();
    area.select();
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    say(button, copied ? "Citation copied" : "Selected: press Ctrl+C to copy");
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy") : null;
    if (!button) return;
    var area = document.getElementById(button.getAttribute("data-copy"));
    if (!area) return;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(area.value).then(
        function () { say(button, "Citation copied"); },
        function () { copyBySelection(area, button); });
    } else {
      copyBySelection(area, button);
    }
  });

  var buttons = document.querySelectorAll("button.copy[hidden]");
  for (var i = 0; i < buttons.length; i++) buttons[i].hidden = false;

  // a cited span opened without its #hl fragment (a hand-made or shortened link) still comes into view
  var mark = document.getElementById("hl");
  if (mark && !window.location.hash) mark.scrollIntoView({block: "center"});

  // empty options stay out of a shared URL: disabled fields are not submitted
  var form = document.querySelector("form.search");
  if (form) {
    var optional = form.querySelectorAll(".options select, .options input");
    form.addEventListener("submit", function () {
      for (var j = 0; j < optional.length; j++) {
        var field = optional[j];
        if (!field.value || (field.name === "mode" && field.value === "hybrid")) field.disabled = true;
      }
    });
    // back to this page from the results: the fields must work again
    window.addEventListener("pageshow", function () {
      for (var j = 0; j < optional.length; j++) optional[j].disabled = false;
    });
  }
})();

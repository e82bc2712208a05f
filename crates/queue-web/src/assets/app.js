// The queue dashboard's only script: live refresh with a pause button, and
// a confirmation before every change. Served from the binary; the
// Content-Security-Policy allows no other script.
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-refresh-ms"), 10) || 2000;
  var button = document.getElementById("live");
  var state = document.getElementById("live-state");
  var live = true;
  var busy = false;

  function editing() {
    var el = document.activeElement;
    var main = document.getElementById("main");
    return el && main && main.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function refresh() {
    if (!live || busy || editing() || document.hidden) return;
    busy = true;
    fetch(window.location.href, { headers: { "x-queue-partial": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        document.getElementById("main").innerHTML = html;
        state.textContent = "updated " + new Date().toLocaleTimeString();
        body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function (e) {
        state.textContent = "refresh failed: " + e.message;
      })
      .then(function () {
        busy = false;
      });
  }

  button.addEventListener("click", function () {
    live = !live;
    button.textContent = live ? "Pause refresh" : "Resume refresh";
    button.setAttribute("aria-pressed", live ? "true" : "false");
    state.textContent = live ? "" : "paused";
  });

  // Delegated, so forms swapped in by a refresh ask too.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  setInterval(refresh, every);
})();

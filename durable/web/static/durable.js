// durable web view: refreshes the counts by status every few seconds, and asks before an action.
// Plain JavaScript, no build step, no network beyond this view.
(function () {
  "use strict";
  var POLL_MS = 5000;

  function refreshCounts() {
    var url = document.body.getAttribute("data-counts-url");
    if (!url || !document.getElementById("counts")) return;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) return;
        Object.keys(data.counts).forEach(function (status) {
          var cell = document.getElementById("count-" + status);
          if (!cell) return;
          var n = data.counts[status];
          cell.textContent = String(n);
        });
        document.getElementById("counts").setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next poll tries again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("counts")) {
      window.setInterval(refreshCounts, POLL_MS);
    }
    document.querySelectorAll("button[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  });
})();

// backy-gevent dashboard: refresh the live part of a page without reloading it, and
// "select all" on the job list. Plain fetch; the fragment is HTML escaped by the server.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (live && window.fetch) {
    var every = parseInt(live.getAttribute("data-every"), 10) || 3000;
    var refresh = function () {
      if (document.hidden) { return; }
      fetch(live.getAttribute("data-refresh"), {credentials: "same-origin"})
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { live.innerHTML = html; } })
        .catch(function () { /* the next tick tries again */ });
    };
    window.setInterval(refresh, every);
  }
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.classList || !box.classList.contains("select-all")) { return; }
    var boxes = box.form.querySelectorAll('input[type="checkbox"][name="id"]');
    for (var i = 0; i < boxes.length; i++) { boxes[i].checked = box.checked; }
  });
}());

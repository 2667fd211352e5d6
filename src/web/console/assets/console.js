// autofollow's web console: small enhancements. Every page works without this script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Dead letters: one box ticks or clears every row.
  var all = document.getElementById("pick-all");
  if (all) {
    all.hidden = false;
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=ids][type=checkbox]").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }
});

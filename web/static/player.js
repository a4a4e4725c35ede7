/* Starts asciinema-player on the session page (an external file: the CSP forbids inline
   scripts). Each <div class="cast" data-src="..."> becomes a player for that recording;
   data-markers puts the commands typed on its progress bar, and data-start-at (a search
   hit, a command's time) shows that moment and plays on from there. Links carrying
   data-seek and data-recording move the player in place instead of reloading the page;
   without JavaScript they reload the page at that moment. */
(function () {
  "use strict";

  // A moment is shown as it stood this long after it: a line entered in one burst (a
  // paste) is echoed by the shell just after its Enter.
  var SHOW_AFTER = 0.5;
  var players = {};

  function start(el) {
    var options = { preload: true, fit: "width", controls: true };
    if (el.dataset.markers) {
      options.markers = JSON.parse(el.dataset.markers);
    }
    if (el.dataset.startAt) {
      var at = Number(el.dataset.startAt);
      options.startAt = at;
      options.poster = "npt:" + (at + SHOW_AFTER);
    }
    var player = window.AsciinemaPlayer.create(el.dataset.src, el, options);
    var section = el.closest("[id^='recording-']");
    if (section) {
      players[section.id] = { player: player, el: el };
    }
  }

  function seek(event) {
    var link = event.target.closest("a[data-seek][data-recording]");
    if (!link) {
      return;
    }
    var target = players["recording-" + link.dataset.recording];
    if (!target) {
      return;
    }
    event.preventDefault();
    target.el.scrollIntoView({ block: "center" });
    target.player.seek(Number(link.dataset.seek) + SHOW_AFTER);
  }

  if (!window.AsciinemaPlayer) {
    document.querySelectorAll("div.cast[data-src]").forEach(function (el) {
      el.textContent = "The recording player did not load; the recording file is linked below.";
    });
    return;
  }
  document.querySelectorAll("div.cast[data-src]").forEach(start);
  document.addEventListener("click", seek);
})();

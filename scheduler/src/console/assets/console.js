// Mofang console: live updates by polling. Every element with `data-live` and an id is
// refreshed from a fresh copy of the same page (rendered by the scheduler, so there is one
// renderer); forms outside those elements are never touched. A lost connection (scheduler
// restarting, leader changing) or a poll unanswered for 10 s (a frozen scheduler or leader)
// shows a banner and polling goes on; an expired session goes
// back to sign-in, remembering the page.
(function () {
  'use strict';
  var every = parseInt(document.body.getAttribute('data-refresh') || '0', 10);
  // A page shown as the answer to a form follows its own GET address, not the form's.
  var url = document.body.getAttribute('data-live-url') || window.location.href;
  var banner = document.getElementById('conn-banner');
  function show(text) {
    if (banner) { banner.textContent = text; banner.hidden = false; }
  }
  function hide() {
    if (banner) { banner.hidden = true; }
  }
  function schedule() { window.setTimeout(tick, every); }
  // Rows whose folded details the user opened (by the row's data-op), to open them again.
  function openRows(el) {
    var keys = {};
    var ds = el.querySelectorAll('details[open]');
    for (var i = 0; i < ds.length; i++) {
      var row = ds[i].closest('[data-op]');
      if (row) { keys[row.getAttribute('data-op')] = true; }
    }
    return keys;
  }
  function reopen(el, keys) {
    var rows = el.querySelectorAll('[data-op]');
    for (var i = 0; i < rows.length; i++) {
      var d = rows[i].querySelector('details');
      if (d && keys[rows[i].getAttribute('data-op')]) { d.open = true; }
    }
  }
  function apply(html) {
    var doc = new DOMParser().parseFromString(html, 'text/html');
    var live = document.querySelectorAll('[data-live]');
    for (var i = 0; i < live.length; i++) {
      var fresh = doc.getElementById(live[i].id);
      // A region holding the keyboard focus waits: replacing it would lose the focus.
      if (live[i].contains(document.activeElement) && document.activeElement !== document.body) {
        continue;
      }
      if (fresh && fresh.innerHTML !== live[i].innerHTML) {
        var keys = openRows(live[i]);
        live[i].innerHTML = fresh.innerHTML;
        reopen(live[i], keys);
      }
    }
  }
  // A poll that has not been answered in this long is given up: a frozen scheduler (or a
  // follower waiting on a frozen leader) keeps the connection open without answering.
  var answerWithin = 10000;
  function tick() {
    if (document.hidden) { schedule(); return; }
    var ctl = new AbortController();
    var timer = window.setTimeout(function () { ctl.abort(); }, answerWithin);
    fetch(url, { credentials: 'same-origin', headers: { 'X-Mofang-Live': '1' }, signal: ctl.signal })
      .then(function (r) {
        if (r.redirected && r.url.indexOf('/ui/login') !== -1) {
          window.location.assign(r.url);
          return null;
        }
        if (!r.ok) {
          show('The scheduler answered ' + r.status + '; retrying…');
          return null;
        }
        return r.text();
      })
      .then(function (html) {
        if (html !== null) { hide(); apply(html); }
      })
      .catch(function (e) {
        show(e && e.name === 'AbortError'
          ? 'The scheduler has not answered for ' + answerWithin / 1000 + ' s; retrying…'
          : 'Connection to the scheduler lost; reconnecting…');
      })
      .then(function () { window.clearTimeout(timer); schedule(); });
  }
  if (every > 0) { schedule(); }
})();

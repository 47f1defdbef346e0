// metavmm dashboard: live updates from /ui/events (server-sent events), no polling loop.
// Elements carrying data-workload-id / data-operation-id are updated in place as events arrive.
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  if (!live || !window.EventSource) { return; }
  const source = new EventSource(live.getAttribute("data-live"));
  const log = document.getElementById("event-log");
  function each(selector, fn) { document.querySelectorAll(selector).forEach(fn); }
  function operation(d) {
    each('[data-operation-id="' + CSS.escape(d.operation) + '"]', function (row) {
      row.setAttribute("data-state", d.state);
      const state = row.querySelector(".op-state"); if (state) { state.textContent = d.state; }
      const bar = row.querySelector(".op-progress");
      if (bar) { bar.value = d.progress; bar.textContent = Math.round(d.progress * 100) + "%"; }
      const xfer = row.querySelector(".op-transfer");
      if (xfer && d.transfer) { transfer(xfer, d.transfer); }
      if (d.transfer && d.transfer.step) {
        // the step moving the data keeps its own figures in its line of the plan (as the page renders them)
        row.querySelectorAll('ol.steps li[data-step-name="' + CSS.escape(d.transfer.step) + '"]').forEach(
          function (li) { stepTransfer(li, d.transfer); });
      }
    });
  }
  function stepTransfer(li, t) {
    let span = li.querySelector(".step-transfer");
    if (!span) {
      span = document.createElement("span");
      span.className = "step-transfer";
      li.appendChild(document.createTextNode(" "));
      li.appendChild(span);
    }
    transfer(span, t);
    span.textContent = "(" + span.textContent + ")";
  }
  function mib(n) { return typeof n === "number" ? (n / 1048576).toFixed(1) : "?"; }
  function transfer(el, t) {
    // a migration's bytes, throughput and time left: the same words as transfer_text() on the server
    el.hidden = false;
    el.setAttribute("data-bytes", t.bytes);
    el.setAttribute("data-total", t.total_bytes);
    el.setAttribute("data-rate", t.bytes_per_s === null ? "" : t.bytes_per_s);
    el.setAttribute("data-eta", t.eta_s === null ? "" : t.eta_s);
    el.textContent = mib(t.bytes) + " of " + mib(t.total_bytes) + " MiB"
      + (t.bytes_per_s ? " · " + mib(t.bytes_per_s) + " MiB/s" : "")
      + (typeof t.eta_s === "number" ? " · " + t.eta_s.toFixed(0) + " s left" : "");
  }
  function step(d) {
    // a history line about a step ("step create done", "step create: vm.create ...") moves that step on
    if (typeof d.step !== "number") { return; }
    each('[data-operation-id="' + CSS.escape(d.operation) + '"] ol.steps li:nth-child(' + (d.step + 1) + ")",
      function (li) {
        const name = li.getAttribute("data-step-name");
        const m = d.message;
        const state = d.level === "error" ? "failed" : m.endsWith(" undone") ? "undone" : m.endsWith(" done") ? "done"
          : m.startsWith("step " + name) ? "running" : li.getAttribute("data-step-state");
        li.setAttribute("data-step-state", state);
        const figures = li.querySelector(".step-transfer");  // the step's bytes stay beside its new state
        li.textContent = name + ": " + state;
        if (figures) { li.appendChild(document.createTextNode(" ")); li.appendChild(figures); }
      });
  }
  function repoint(d) {
    // a row showing a workload's latest operation (a class's seat) follows a newer one on it (a reset, a delete)
    if (!d.target) { return; }
    each('[data-latest-op-of="' + CSS.escape(d.target) + '"]', function (row) {
      if (row.getAttribute("data-operation-id") === d.operation) { return; }
      row.setAttribute("data-operation-id", d.operation);
      const kind = row.querySelector(".op-kind"); if (kind) { kind.textContent = d.kind; }
    });
  }
  function seatSummaries() {
    // a class's state: its seats' states counted, most first (the words seat_states() renders on the server)
    each(".seat-summary[data-seats-in]", function (el) {
      const box = document.querySelector(el.getAttribute("data-seats-in"));
      if (!box) { return; }
      const counted = {};
      box.querySelectorAll("[data-workload-id] .wl-state").forEach(function (s) {
        counted[s.textContent] = (counted[s.textContent] || 0) + 1;
      });
      const parts = Object.keys(counted).map(function (k) { return [k, counted[k]]; });
      parts.sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0); });
      el.textContent = parts.length ? parts.map(function (p) { return p[1] + " " + p[0]; }).join(", ") : "no seats";
    });
  }
  const states = {};  // each workload's state as the last workload event said (a row added later starts from it)
  const gone = {};  // seats removed while their row was asked for
  function seat(d) {
    // a class's seat added or removed elsewhere (REST, the CLI, another browser): its row comes and goes
    if (document.querySelector('#cluster[data-cluster-id="' + CSS.escape(d.cluster) + '"]')) {
      const count = document.getElementById("seat-count"); if (count) { count.textContent = d.seats; }
      const body = document.querySelector("#seats tbody");
      const row = body && body.querySelector('tr[data-workload-id="' + CSS.escape(d.workload) + '"]');
      if (!d.present) {
        gone[d.workload] = true;
        if (row) { row.remove(); }
        if (body && !body.querySelector("tr[data-seat]") && !body.querySelector("tr.none")) {
          const none = document.createElement("tr"); none.className = "none";
          const td = document.createElement("td"); td.colSpan = 9; td.textContent = "No seats.";
          none.appendChild(td); body.appendChild(none);
        }
      } else if (body && !row) { addSeat(body, d); }
    }
    each('#classes tr[data-cluster-id="' + CSS.escape(d.cluster) + '"]', function (tr) {
      // the classes list: the class's seat count, and its seats' states for the summary
      tr.setAttribute("data-seats", d.seats);
      const n = tr.querySelector(".seat-count"); if (n) { n.textContent = d.seats; }
      const held = tr.querySelector('[data-workload-id="' + CSS.escape(d.workload) + '"]');
      const summary = tr.querySelector(".seat-summary");
      if (!d.present) { if (held) { held.remove(); } } else if (!held && summary) {
        const span = document.createElement("span"); span.hidden = true;
        span.setAttribute("data-workload-id", d.workload);
        const st = document.createElement("span"); st.className = "wl-state"; st.textContent = states[d.workload] || d.state;
        span.appendChild(st); summary.parentNode.appendChild(span);
      }
    });
    seatSummaries();
    siteSeats();
  }
  function siteSeats() {
    // each site's seats on a class page (its address range's table): the seat rows at that site, by serial
    each("#class-sites tr[data-site]", function (tr) {
      const cell = tr.querySelector(".site-seats");
      if (!cell) { return; }
      const names = [];
      document.querySelectorAll("#seats tr[data-seat]").forEach(function (row) {
        if (row.getAttribute("data-site") === tr.getAttribute("data-site")) { names.push(row.getAttribute("data-hostname")); }
      });
      cell.textContent = names.length ? names.join(", ") : "none";
    });
  }
  function addSeat(body, d) {
    // the row as the page renders it (GET /ui/clusters/{id}/seats/{serial}), in serial order
    fetch("/ui/clusters/" + encodeURIComponent(d.cluster) + "/seats/" + encodeURIComponent(d.serial),
      { credentials: "same-origin" }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
      if (html === null || gone[d.workload]) { return; }
      if (body.querySelector('tr[data-workload-id="' + CSS.escape(d.workload) + '"]')) { return; }
      const t = document.createElement("template"); t.innerHTML = html.trim();
      const row = t.content.querySelector("tr[data-seat]");
      if (!row || row.getAttribute("data-workload-id") !== d.workload) { return; }
      const st = row.querySelector(".wl-state"); if (st && states[d.workload]) { st.textContent = states[d.workload]; }
      const next = Array.prototype.find.call(body.querySelectorAll("tr[data-seat]"), function (r) {
        return Number(r.getAttribute("data-seat")) > Number(d.serial);
      });
      body.insertBefore(row, next || null);
      const none = body.querySelector("tr.none"); if (none) { none.remove(); }
      seatSummaries();
      siteSeats();
    });
  }
  source.addEventListener("seat", function (e) { seat(JSON.parse(e.data)); });
  source.addEventListener("operation", function (e) {
    const d = JSON.parse(e.data);
    repoint(d);
    operation(d);
    step(d);
    if (log) {
      const li = document.createElement("li");
      li.textContent = d.at + " " + d.kind + " " + d.state + ": " + d.message;
      log.appendChild(li);
    }
  });
  source.addEventListener("progress", function (e) { operation(JSON.parse(e.data)); });
  source.addEventListener("end", function (e) {
    // the session ended (a logout in another tab, expiry, revocation): stop, and say so instead of retrying
    source.close();
    live.setAttribute("data-live-ended", "true");
    const note = document.createElement("p");
    note.id = "live-ended";
    note.className = "error";
    note.setAttribute("role", "alert");
    note.textContent = JSON.parse(e.data).reason;
    const main = document.getElementById("main");
    if (main) { main.prepend(note); }
  });
  source.addEventListener("sync", function (e) {
    // a provider's sync result (the overview's providers table): its time, age, error, failing or not
    const d = JSON.parse(e.data);
    each('tr[data-provider="' + CSS.escape(d.provider) + '"]', function (row) {
      row.setAttribute("data-sync-result", d.result);
      row.classList.toggle("failing", d.result === "error");
      const at = row.querySelector(".synced");
      if (at && d.synced_at) { at.textContent = d.synced_at.slice(0, 19).replace("T", " "); }
      const age = row.querySelector(".age");
      if (age && d.result === "ok") { age.textContent = "0 s"; }
      const err = row.querySelector(".err"); if (err) { err.textContent = d.error || ""; }
    });
  });
  source.addEventListener("alert", function (e) {
    // an alert raised (added, or its message updated) or cleared (removed) on the alerts screen
    const d = JSON.parse(e.data);
    const body = document.querySelector("#alerts tbody");
    if (!body) { return; }
    let row = body.querySelector('tr[data-alert-key="' + CSS.escape(d.key) + '"]');
    if (d.state === "cleared") {
      if (row) { row.remove(); }
    } else {
      if (!row) {
        row = document.createElement("tr");
        row.setAttribute("data-alert-key", d.key);
        body.insertBefore(row, body.querySelector("tr.none"));
      }
      row.setAttribute("data-alert", d.kind);
      row.textContent = "";
      const kind = document.createElement("td"); kind.textContent = d.kind;
      const what = document.createElement("th"); what.setAttribute("scope", "row");
      if (d.href) {
        const a = document.createElement("a"); a.href = d.href; a.textContent = d.what; what.appendChild(a);
      } else { what.textContent = d.what; }
      const message = document.createElement("td"); message.textContent = d.message;
      row.append(kind, what, message);
    }
    const none = body.querySelector("tr.none");
    if (none) { none.hidden = body.querySelector("tr[data-alert-key]") !== null; }
  });
  source.addEventListener("workload", function (e) {
    const d = JSON.parse(e.data);
    states[d.workload] = d.state;
    each('[data-workload-id="' + CSS.escape(d.workload) + '"]', function (el) {
      const state = el.querySelector(".wl-state"); if (state) { state.textContent = d.state; }
      const desired = el.querySelector(".wl-desired"); if (desired) { desired.textContent = d.desired_state; }
    });
    seatSummaries();
  });
})();

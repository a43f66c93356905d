// Slipway's pages work without this script; it adds live updates only:
// - pages with <body data-watch> follow /-/events and, when told something changed,
//   fetch themselves again and swap their [data-live] regions (server-rendered HTML);
// - the job log follows its stream (rendered lines as HTML, filed under their
//   collapsible sections), scrolls along unless the reader scrolled up, and shows the
//   final status without a reload;
// - relative times and running durations tick; forms get an "Add variable" button;
//   hovering a job in the pipeline graph highlights its `needs` edges.
"use strict";

(function () {
  // ---- relative times and durations ------------------------------------------------
  function ago(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 10) return "just now";
    const steps = [[60, "second", 1], [3600, "minute", 60], [86400, "hour", 3600],
      [2592000, "day", 86400], [31536000, "month", 2592000], [Infinity, "year", 31536000]];
    for (const [limit, unit, size] of steps) {
      if (s < limit) {
        const n = Math.floor(s / size);
        return n + " " + unit + (n === 1 ? "" : "s") + " ago";
      }
    }
    return "";
  }
  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function tick() {
    const now = Date.now();
    for (const t of document.querySelectorAll("time[data-relative]")) {
      const at = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(at)) t.textContent = ago(now - at);
    }
    for (const d of document.querySelectorAll("[data-since]")) {
      d.textContent = duration(now - Number(d.dataset.since));
    }
  }
  setInterval(tick, 1000);

  // ---- live regions --------------------------------------------------------------
  let refreshing = false, again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const r = await fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (r.ok) {
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        for (const fresh of doc.querySelectorAll("[data-live][id]")) {
          const old = document.getElementById(fresh.id);
          if (old && old.innerHTML !== fresh.innerHTML) old.replaceWith(document.adoptNode(fresh));
        }
        wireGraph();
        wireRows();
        tick();
      }
    } catch (e) { /* the next change retries */ }
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
  window.slipwayRefresh = refresh;
  const watch = document.body.dataset.watch;
  if (watch && window.EventSource) {
    const es = new EventSource("/-/events?watch=" + encodeURIComponent(watch));
    es.addEventListener("changed", refresh);
    // Changes made between rendering the page and opening the stream (or while it
    // was reconnecting) were not announced: look once more.
    es.addEventListener("open", refresh);
  }

  // ---- the pipeline graph: highlight a job's needs --------------------------------
  function wireGraph() {
    for (const graph of document.querySelectorAll(".graph")) {
      if (graph.dataset.wired) continue;
      graph.dataset.wired = "1";
      const light = (card, on) => {
        const i = card.dataset.index;
        for (const e of graph.querySelectorAll(`.edge[data-from="${i}"], .edge[data-to="${i}"]`)) {
          e.classList.toggle("hl", on);
          const other = e.dataset.from === i ? e.dataset.to : e.dataset.from;
          const o = document.getElementById("job-" + other);
          if (o) o.classList.toggle("hl", on);
        }
      };
      for (const card of graph.querySelectorAll(".job-card")) {
        card.addEventListener("mouseenter", () => light(card, true));
        card.addEventListener("mouseleave", () => light(card, false));
        card.addEventListener("focusin", () => light(card, true));
        card.addEventListener("focusout", () => light(card, false));
      }
    }
  }

  // ---- forms: more variable rows ---------------------------------------------------
  function wireRows() {
    for (const b of document.querySelectorAll("[data-add-row]")) {
      if (b.dataset.wired) continue;
      b.dataset.wired = "1";
      b.hidden = false;
      b.addEventListener("click", () => {
        const box = document.getElementById(b.dataset.addRow);
        const last = box && box.lastElementChild;
        if (!last) return;
        const row = last.cloneNode(true);
        const n = box.children.length;
        for (const el of row.querySelectorAll("input, label")) {
          if (el.tagName === "INPUT") { el.value = ""; el.id = el.id.replace(/\d+$/, n); }
          else {
            el.htmlFor = el.htmlFor.replace(/\d+$/, n);
            el.textContent = el.textContent.replace(/\d+/, n + 1);
          }
        }
        box.appendChild(row);
        row.querySelector("input").focus();
      });
    }
  }

  // ---- the live log ----------------------------------------------------------------
  function sectionDuration(secs) {
    const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    const two = (x) => String(x).padStart(2, "0");
    return h > 0 ? h + ":" + two(m) + ":" + two(s) : two(m) + ":" + two(s);
  }
  // The element holding lines of section path `names` (the newest section of each name).
  function containerFor(root, names) {
    let box = root;
    for (const name of names) {
      let found = null;
      for (let el = box.lastElementChild; el; el = el.previousElementSibling) {
        if (el.tagName === "DETAILS" && el.dataset.section === name) { found = el; break; }
      }
      if (!found) break;
      box = found;
    }
    return box;
  }
  function pathOf(el) {
    const s = el.getAttribute("data-section");
    return s ? s.split("/") : [];
  }
  // Files rendered fragments (ansi.rs Event::to_html) into the log.
  function append(log, html) {
    const placeholder = log.querySelector(".log-placeholder");
    if (placeholder && html) placeholder.remove();
    const t = document.createElement("template");
    t.innerHTML = html;
    for (const el of Array.from(t.content.children)) {
      if (el.id && document.getElementById(el.id)) continue; // seen before a reconnection
      const path = pathOf(el);
      if (el.classList.contains("section-header")) {
        const name = path.pop();
        const d = document.createElement("details");
        d.className = "section";
        d.dataset.section = name;
        if (el.dataset.collapsed !== "true") d.open = true;
        const s = document.createElement("summary");
        s.className = "section-header";
        s.id = el.id;
        while (el.firstChild) s.appendChild(el.firstChild);
        d.appendChild(s);
        containerFor(log, path).appendChild(d);
      } else if (el.classList.contains("section-end")) {
        const box = containerFor(log, path);
        if (box !== log && box.dataset.section === path[path.length - 1] && el.dataset.duration) {
          const summary = box.querySelector(":scope > summary");
          if (summary && !summary.querySelector(".section-duration")) {
            const span = document.createElement("span");
            span.className = "section-duration";
            span.textContent = sectionDuration(Number(el.dataset.duration));
            summary.appendChild(span);
          }
        }
        if (box !== log) box.dataset.closed = "true";
      } else {
        containerFor(log, path).appendChild(el);
      }
    }
  }

  const log = document.getElementById("log");
  if (log && log.dataset.stream && window.EventSource) {
    const followBtn = document.querySelector("[data-log-follow]");
    const topBtn = document.querySelector("[data-log-top]");
    const sizeEl = document.getElementById("log-size");
    const nearBottom = () =>
      window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 48;
    let follow = true;
    const setFollow = (on) => {
      follow = on;
      log.dataset.follow = on ? "true" : "false";
      if (followBtn) {
        followBtn.setAttribute("aria-pressed", on ? "true" : "false");
        followBtn.textContent = on ? "Following" : "Follow";
      }
      document.body.classList.toggle("follow-off", !on);
    };
    const toBottom = () => window.scrollTo(0, document.documentElement.scrollHeight);
    if (followBtn) {
      followBtn.hidden = false;
      followBtn.addEventListener("click", () => { setFollow(!follow); if (follow) toBottom(); });
    }
    if (topBtn) {
      topBtn.hidden = false;
      topBtn.addEventListener("click", () => { setFollow(false); window.scrollTo(0, 0); });
    }
    // The reader scrolling up stops following; coming back to the end resumes it.
    window.addEventListener("scroll", () => setFollow(nearBottom()), { passive: true });
    const scroll = () => { if (follow) toBottom(); };
    setFollow(true);
    // A running job's page opens at the end of its log, as a terminal would.
    if (log.dataset.running) scroll();

    const es = new EventSource(log.dataset.stream);
    es.addEventListener("log", (e) => {
      append(log, e.data);
      if (sizeEl && e.lastEventId) sizeEl.textContent = (Number(e.lastEventId) / 1024).toFixed(1) + " KiB";
      scroll();
    });
    es.addEventListener("end", (e) => {
      es.close();
      try {
        const end = JSON.parse(e.data);
        if (end.html) append(log, end.html);
        log.dataset.status = end.status || "";
      } catch (_) { /* the reload below shows the status anyway */ }
      log.dataset.complete = "true";
      const waiting = document.getElementById("log-waiting");
      if (waiting) waiting.remove();
      scroll();
      refresh();
    });
    es.addEventListener("failure", () => { es.close(); });
  }

  wireGraph();
  wireRows();
})();

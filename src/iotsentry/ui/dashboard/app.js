/* iotsentry web dashboard: a single-page app over the JSON API (no build step, no third-party code).
 *
 * Auth: the user pastes an API token; it is checked with GET /whoami, kept in sessionStorage
 * (this tab only) and sent as "Authorization: Bearer <token>" on every fetch. A 401 logs out.
 * Every string from the API is attacker-influenced (device names, DHCP fields, alert reasons):
 * the DOM is built with createElement/textContent only, never innerHTML.
 */
"use strict";

(function () {
  const TOKEN_KEY = "iotsentry.token";
  const SEV = {
    1: { name: "high", color: "#c0392b", weight: 3 },
    2: { name: "medium", color: "#e67e22", weight: 2 },
    3: { name: "low", color: "#f1c40f", weight: 1 },
    4: { name: "info", color: "#7f8c8d", weight: 0 },
  };
  const INCIDENT_STATUS = ["open", "acknowledged", "expected", "resolved"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const path = window.location.pathname;
  const API_BASE = path.includes("/ui/") ? path.slice(0, path.lastIndexOf("/ui/")) : "";

  const state = {
    token: null,
    who: null,
    renderSeq: 0,
    devices: { q: "", type: "", vendor: "", mature: "", limit: 25, offset: 0, sort: "risk", dir: -1 },
    alerts: { sev: [], category: "", device: "", status: "open", eventType: "", limit: 25, offset: 0 },
    incidents: { status: "active", minSev: "", cause: "", device: "", limit: 25, offset: 0 },
  };

  // -- small helpers ---------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** Build an element: h("a", {href: "#", class: "x", onclick: fn}, "text", child, ...). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "disabled" || k === "checked" || k === "selected") el[k] = Boolean(v);
      else if (k === "value") el.value = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(ts) {
    if (ts === null || ts === undefined) return "-";
    const d = new Date(ts * 1000);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
  }

  function fmtNum(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "-";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x)) return x.toLocaleString("en-US");
    return x.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    let v = n;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 120) return `${Math.round(s)} s`;
    if (s < 7200) return `${(s / 60).toFixed(1)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  function sevBadge(sev) {
    const s = SEV[sev] || { name: String(sev) };
    return h("span", { class: `badge sev${sev}` }, s.name);
  }

  function qs(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === null || v === undefined || v === "") continue;
      if (Array.isArray(v)) v.forEach((x) => u.append(k, String(x)));
      else u.append(k, String(v));
    }
    const s = u.toString();
    return s ? `?${s}` : "";
  }

  function detailText(detail) {
    if (detail === null || detail === undefined) return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((p) => `${(p.loc || []).join(".")}: ${p.msg}`).join("; ");
    }
    return JSON.stringify(detail);
  }

  // -- the API -----------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(`${status} ${code}: ${detail}`);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  async function api(route, opts) {
    const o = opts || {};
    const headers = { Accept: "application/json", Authorization: `Bearer ${state.token}` };
    const init = { method: o.method || "GET", headers, cache: "no-store", credentials: "omit" };
    if (o.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(o.body);
    }
    let r;
    try {
      r = await fetch(API_BASE + route, init);
    } catch (e) {
      throw new ApiError(0, "network_error", `cannot reach the API (${e.message})`);
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new ApiError(r.status, (data && data.error) || `http_${r.status}`,
        detailText(data && data.detail) || r.statusText);
      if (r.status === 401 && !o.noLogout) logout(`The API refused the token (${err.detail}); log in again.`);
      throw err;
    }
    return data;
  }

  const isAdmin = () => Boolean(state.who && state.who.scope === "admin");

  // -- login / logout ----------------------------------------------------------------------------------

  function showBanner(text, kind) {
    const b = $("banner");
    b.textContent = text || "";
    b.className = kind || "";
    b.hidden = !text;
  }

  function showLogin(message) {
    $("login").hidden = false;
    const view = $("view");
    view.hidden = true;
    view.replaceChildren(); // nothing of the previous session stays in the page
    delete view.dataset.page;
    delete view.dataset.ready;
    $("nav").hidden = true;
    $("logout").hidden = true;
    $("who").textContent = "";
    const e = $("login-error");
    e.textContent = message || "";
    e.hidden = !message;
    $("token-input").focus();
  }

  function logout(message) {
    state.token = null;
    state.who = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
    showBanner("");
    showLogin(message);
  }

  async function login(token, remember) {
    state.token = token;
    try {
      state.who = await api("/whoami", { noLogout: true });
    } catch (e) {
      state.token = null;
      state.who = null;
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (x) { /* storage disabled */ }
      const why = e.status === 401 ? `the token was refused (${e.detail})` : e.message;
      showLogin(`Login failed: ${why}.`);
      return false;
    }
    if (remember) {
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage disabled: keep it in memory */ }
    }
    $("login").hidden = true;
    $("token-input").value = "";
    $("nav").hidden = false;
    $("logout").hidden = false;
    $("who").textContent = `${state.who.name} (${state.who.scope})`;
    showBanner(isAdmin() ? "" : "Read-only token (scope 'read'): acknowledging, assigning, marking expected and " +
      "resolving need an admin token.", "info");
    await render();
    return true;
  }

  // -- routing -----------------------------------------------------------------------------------------

  function parseHash() {
    const raw = window.location.hash.replace(/^#\/?/, "");
    const [first, ...rest] = raw.split("/");
    if (first === "device" && rest.length) return { page: "device", id: decodeURIComponent(rest.join("/")) };
    if (first === "incident" && rest.length) return { page: "incident", id: decodeURIComponent(rest.join("/")) };
    if (["alerts", "models", "devices", "incidents"].includes(first)) return { page: first };
    return { page: "devices" };
  }

  async function render() {
    if (!state.token) return;
    const route = parseHash();
    const seq = ++state.renderSeq;
    for (const a of document.querySelectorAll("#nav a")) {
      const on = a.dataset.nav === route.page || (route.page === "device" && a.dataset.nav === "devices") ||
        (route.page === "incident" && a.dataset.nav === "incidents");
      a.classList.toggle("active", on);
    }
    const view = $("view");
    const samePage = view.dataset.page === route.page && route.page !== "device" && route.page !== "incident";
    view.dataset.page = route.page;
    view.dataset.ready = "0";
    view.hidden = false;
    if (!samePage) view.replaceChildren(h("p", { class: "muted" }, "Loading..."));
    const content = h("div");
    try {
      if (route.page === "device") await renderDevice(content, route.id);
      else if (route.page === "incident") await renderIncident(content, route.id);
      else if (route.page === "incidents") await renderIncidents(content);
      else if (route.page === "alerts") await renderAlerts(content);
      else if (route.page === "models") await renderModels(content);
      else await renderDevices(content);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      content.replaceChildren(h("p", { class: "error" }, `Could not load this page: ${e.message}`));
    }
    if (seq !== state.renderSeq || !state.token) return; // a newer render started
    // keep the caret in a filter box the user is typing in (the page is rebuilt around it)
    const focused = document.activeElement && view.contains(document.activeElement) ? document.activeElement.id : "";
    view.replaceChildren(content);
    view.dataset.ready = "1";
    const again = focused && focused.startsWith("dev-filter-") ? $(focused) : null;
    if (again && again.tagName === "INPUT") {
      again.focus();
      const end = again.value.length;
      try { again.setSelectionRange(end, end); } catch (e) { /* not a text input */ }
    }
  }

  function rerenderSoon() {
    window.clearTimeout(rerenderSoon.timer);
    rerenderSoon.timer = window.setTimeout(render, 250);
  }

  // -- device inventory ----------------------------------------------------------------------------------

  async function openBySeverity(filters) {
    const out = {};
    const sums = await Promise.all([1, 2, 3].map((s) =>
      api(`/alerts/summary${qs({ ...filters, acknowledged: false, severity: s })}`)));
    sums.forEach((sum, i) => {
      for (const row of sum.by_device) {
        const o = out[row.key] || (out[row.key] = { 1: 0, 2: 0, 3: 0 });
        o[i + 1] = row.total;
      }
    });
    return out;
  }

  const riskOf = (bySev) => (bySev ? 3 * bySev[1] + 2 * bySev[2] + bySev[3] : 0);

  function riskCell(bySev) {
    const r = riskOf(bySev);
    const level = !bySev || r === 0 ? 0 : bySev[1] ? 3 : bySev[2] ? 2 : 1;
    const title = bySev ? `open alerts: ${bySev[1]} high x3 + ${bySev[2]} medium x2 + ${bySev[3]} low x1` : "no open alerts";
    return h("span", { class: `risk r${level}`, title }, String(r));
  }

  function maturityCell(d) {
    if (d.maturity === null || d.maturity === undefined) return h("span", { class: "muted" }, "no baseline");
    const bar = h("span", { class: `bar${d.mature ? " mature" : ""}` }, h("span"));
    bar.firstChild.style.width = `${Math.round(100 * d.maturity)}%`;
    return h("span", { title: d.mature ? "mature baseline" : "still learning" }, bar,
      `${Math.round(100 * d.maturity)}% `, h("span", { class: "muted" }, d.mature ? "mature" : "learning"));
  }

  const DEVICE_COLUMNS = [
    { key: "label", title: "Device", value: (d) => d.label.toLowerCase() },
    { key: "mac", title: "MAC", value: (d) => d.mac || "" },
    { key: "ips", title: "IPs", value: (d) => (d.ips[0] || "").split(".").map((x) => x.padStart(3, "0")).join(".") },
    { key: "vendor", title: "Vendor", value: (d) => (d.vendor || "").toLowerCase() },
    { key: "type", title: "Type", value: (d) => d.device_type || "" },
    { key: "maturity", title: "Maturity", value: (d) => (d.maturity === null ? -1 : d.maturity), num: true },
    { key: "risk", title: "Risk", value: (d) => d.risk, num: true },
    { key: "open", title: "Open alerts", value: (d) => d.open_alerts, num: true },
    { key: "incidents", title: "Open incidents", value: (d) => d.open_incidents, num: true },
    { key: "visibility", title: "Sensor sees", value: (d) => visibilityText(d.visibility) },
  ];

  /** What the sensor can observe of a device's application fields, as one short line. */
  function visibilityText(v) {
    if (!v || typeof v !== "object") return "";
    return Object.entries(v).map(([k, x]) => `${k.replace(/_/g, " ")}: ${typeof x === "object" ? JSON.stringify(x) : x}`)
      .join(", ");
  }

  function visibilityCell(v) {
    const text = visibilityText(v);
    if (!text) return h("span", { class: "muted" }, "unknown");
    const limited = Object.values(v).some((x) => x === "truncated" || x === "not seen");
    return h("span", { class: `visibility${limited ? " limited" : ""}`, title: text }, text);
  }

  async function renderDevices(root) {
    const f = state.devices;
    const filters = { q: f.q, type: f.type, vendor: f.vendor, mature: f.mature };
    const [page, risk, summary] = await Promise.all([
      api(`/devices${qs({ ...filters, limit: f.limit, offset: f.offset })}`),
      openBySeverity({}),
      api("/alerts/summary?acknowledged=false"),
    ]);
    if (page.total > 0 && f.offset >= page.total) { f.offset = 0; return renderDevices(root); }
    const rows = page.items.map((d) => ({ ...d, risk: riskOf(risk[d.device_id]), bySev: risk[d.device_id] }));
    const col = DEVICE_COLUMNS.find((c) => c.key === f.sort) || DEVICE_COLUMNS[0];
    rows.sort((a, b) => {
      const x = col.value(a);
      const y = col.value(b);
      const c = x < y ? -1 : x > y ? 1 : a.device_id < b.device_id ? -1 : 1;
      return c * f.dir;
    });
    const sevCount = (s) => (summary.by_severity.find((r) => r.key === s) || { total: 0 }).total;

    append(root, [
      h("h1", {}, "Device inventory"),
      h("div", { class: "cards" },
        h("div", { class: "card" }, h("div", { class: "v", id: "devices-total" }, String(page.total)),
          h("div", { class: "k" }, "devices matching")),
        h("div", { class: "card" }, h("div", { class: "v" }, String(summary.open)), h("div", { class: "k" }, "open alerts")),
        [1, 2, 3].map((s) => h("div", { class: `card sev${s}` }, h("div", { class: "v" }, String(sevCount(s))),
          h("div", { class: "k" }, `open ${SEV[s].name}`)))),
      deviceFilters(),
      rows.length === 0
        ? h("p", { class: "empty" }, "No device matches these filters.")
        : deviceTable(rows),
      pager(page, f, "devices"),
      h("p", { class: "note" }, "Risk = open alerts weighted by severity (high x3, medium x2, low x1). " +
        "Filters and paging are done by the API; sorting orders the page shown."),
    ]);
  }

  function deviceFilters() {
    const f = state.devices;
    const text = (key, label, placeholder) => h("label", {}, label,
      h("input", { id: `dev-filter-${key}`, type: "search", value: f[key], placeholder,
        oninput: (e) => { f[key] = e.target.value.trim(); f.offset = 0; rerenderSoon(); } }));
    return h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); render(); } },
      text("q", "Search", "name, MAC, IP, vendor"),
      text("type", "Type", "e.g. camera"),
      text("vendor", "Vendor", ""),
      h("label", {}, "Baseline",
        h("select", { id: "dev-filter-mature", onchange: (e) => { f.mature = e.target.value; f.offset = 0; render(); } },
          [["", "any"], ["true", "mature"], ["false", "learning"]].map(([v, t]) =>
            h("option", { value: v, selected: f.mature === v }, t)))),
      pageSizeSelect(f));
  }

  function pageSizeSelect(f) {
    return h("label", {}, "Per page",
      h("select", { class: "page-size", onchange: (e) => { f.limit = Number(e.target.value); f.offset = 0; render(); } },
        [10, 25, 50, 100].map((n) => h("option", { value: String(n), selected: f.limit === n }, String(n)))));
  }

  function deviceTable(rows) {
    const f = state.devices;
    const head = h("tr", {}, DEVICE_COLUMNS.map((c) => {
      const active = f.sort === c.key;
      return h("th", {
        class: `sortable${c.num ? " num" : ""}`, dataset: { sort: c.key },
        "aria-sort": active ? (f.dir > 0 ? "ascending" : "descending") : "none",
        title: "sort this page",
        onclick: () => {
          if (f.sort === c.key) f.dir = -f.dir;
          else { f.sort = c.key; f.dir = c.num ? -1 : 1; }
          render();
        },
      }, c.title, h("span", { class: "arrow" }, active ? (f.dir > 0 ? "\u25b2" : "\u25bc") : ""));
    }));
    const body = rows.map((d) => h("tr", { class: d.risk ? "flagged" : null, dataset: { device: d.device_id } },
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.device_id)}`, class: "device-link" }, d.label),
        d.is_gateway ? h("span", { class: "muted" }, " (gateway)") : null),
      h("td", { class: "mono" }, d.mac || "-"),
      h("td", { class: "mono" }, d.ips.join(", ") || "-"),
      h("td", {}, d.vendor || h("span", { class: "muted" }, "unknown")),
      h("td", {}, d.device_type ? `${d.device_type} ` : h("span", { class: "muted" }, "unknown"),
        d.device_type ? h("span", { class: "muted" }, `(${Math.round(100 * d.type_confidence)}%)`) : null),
      h("td", {}, maturityCell(d)),
      h("td", { class: "num" }, riskCell(d.bySev)),
      h("td", { class: "num" }, String(d.open_alerts)),
      h("td", { class: "num" }, d.open_incidents ? h("a", { href: "#/incidents", class: "incident-count",
        onclick: () => { Object.assign(state.incidents, { device: d.device_id, status: "active", offset: 0 }); } },
      String(d.open_incidents)) : "0"),
      h("td", { dataset: { visibility: d.device_id } }, visibilityCell(d.visibility))));
    return h("table", { class: "wide", id: "device-table" }, h("thead", {}, head), h("tbody", {}, body));
  }

  function pager(page, f, name) {
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.items.length;
    return h("div", { class: "pager", id: `${name}-pager` },
      h("button", { type: "button", disabled: page.offset <= 0, class: "prev",
        onclick: () => { f.offset = Math.max(0, f.offset - f.limit); render(); } }, "\u2190 Previous"),
      h("span", { class: "muted" }, `${first}\u2013${last} of ${page.total}`),
      h("button", { type: "button", disabled: last >= page.total, class: "next",
        onclick: () => { f.offset += f.limit; render(); } }, "Next \u2192"));
  }

  // -- one device ------------------------------------------------------------------------------------

  async function renderDevice(root, id) {
    const enc = encodeURIComponent(id);
    let dev;
    try {
      dev = await api(`/devices/${enc}`);
    } catch (e) {
      if (e.status === 404) {
        append(root, [h("p", {}, h("a", { href: "#/devices" }, "\u2190 inventory")),
          h("p", { class: "error" }, `No device ${id} in the store.`)]);
        return;
      }
      throw e;
    }
    const alerts = await fetchAll(`/alerts${qs({ device_id: id })}`, 5000);
    const b = dev.baseline;
    const p = (b && b.profile) || {};
    append(root, [
      h("p", {}, h("a", { href: "#/devices" }, "\u2190 inventory")),
      h("h1", { id: "device-title" }, dev.label, dev.label !== dev.device_id ? h("span", { class: "muted" }, ` ${dev.device_id}`) : null),
      h("div", { class: "grid2" },
        h("div", {}, h("h2", {}, "Identity"), kvTable([
          ["MAC", dev.mac || "-"], ["IPs", dev.ips.join(", ") || "-"], ["Vendor", dev.vendor || "unknown"],
          ["Type", dev.device_type ? `${dev.device_type} (${Math.round(100 * dev.type_confidence)}%)` : "unknown"],
          ["Names", dev.names.join(", ") || "-"], ["DNS names", dev.dns_names.join(", ") || "-"],
          ["TLS SNI", dev.tls_sni.join(", ") || "-"], ["SSDP", dev.ssdp.join(", ") || "-"],
          ["First / last seen", `${fmtTime(dev.first_seen)} / ${fmtTime(dev.last_seen)}`],
          ["Traffic", `${fmtNum(dev.packets)} packets, ${fmtBytes(dev.bytes)}`],
          ["Alerts", `${dev.alerts} (${dev.open_alerts} open), ${dev.notices} notices`],
          ["Open incidents", String(dev.open_incidents)],
          ["Sensor sees", h("span", { id: "device-visibility" }, visibilityCell(dev.visibility))],
        ], "device-identity")),
        h("div", { id: "baseline" }, h("h2", {}, "Baseline"), b ? kvTable([
          ["Maturity", maturityCell(dev)],
          ["Why", h("span", { id: "maturity-reason" }, (p.maturity && p.maturity.reason) || "-")],
          ["Observed", `${fmtDuration(p.observed_s)} in ${fmtNum(p.windows)} windows of ${fmtNum(p.window_s)} s`],
          ["Peers / services", `${fmtNum(p.peer_count ?? (p.peers || []).length)} / ${fmtNum((p.services || []).length)}`],
          ["Updated", `${fmtTime(b.updated)} (run ${b.run_id ?? "-"})`],
          ["Quarantined", (p.quarantined || []).length ? JSON.stringify(p.quarantined) : "none"],
        ], "baseline-summary") : h("p", { class: "empty" }, "No baseline saved for this device yet."))),
      h("h2", {}, "Alerts over time"),
      timeline(alerts, dev),
      h("div", { class: "grid2" },
        h("div", {}, h("h2", {}, "Peers"), listTable("baseline-peers", ["Peer IP", "Name", "Windows seen"],
          (p.peers || []).map((x) => [h("span", { class: "mono" }, x.ip), x.name || h("span", { class: "muted" }, "(no name)"),
            fmtNum(x.windows)]), "No peers in the baseline.")),
        h("div", {}, h("h2", {}, "Services"), listTable("baseline-services", ["Service", "Windows seen"],
          (p.services || []).map((x) => [x.service, fmtNum(x.windows)]), "No services in the baseline."))),
      h("h2", {}, "Per-window volumes"),
      h("p", { class: "note" }, `Per ${fmtNum(p.window_s)}-second window of the baseline; the limit is where the profile detector alerts.`),
      listTable("baseline-volumes", ["Feature", "Mean", "p95", "Max", "Limit"],
        Object.entries(p.per_window || {}).map(([k, v]) => {
          const lim = (p.limits || {})[k];
          return [k, fmtNum(v.mean), fmtNum(v.p95), fmtNum(v.max), lim === undefined ? "-" : fmtNum(lim)];
        }), "No per-window statistics.", [false, true, true, true, true]),
      h("h2", {}, `Alerts of this device (${alerts.length})`),
      alerts.length ? alertMiniTable(alerts) : h("p", { class: "empty" }, "No alerts."),
      h("p", {}, h("a", { href: "#/incidents", onclick: () => { Object.assign(state.incidents, { device: id, status: "all", offset: 0 }); } },
        "Its incidents \u2192"), " ",
      h("a", { href: "#/alerts", onclick: () => { Object.assign(state.alerts, { device: id, status: "all", offset: 0 }); } },
        "Its alerts \u2192")),
    ]);
  }

  async function fetchAll(route, max) {
    const out = [];
    let cursor = null;
    const sep = route.includes("?") ? "&" : "?";
    do {
      const page = await api(`${route}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      out.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && out.length < max);
    return out;
  }

  function kvTable(pairs, id) {
    return h("table", { class: "kv", id }, h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
  }

  function listTable(id, headers, rows, emptyText, numeric) {
    if (!rows.length) return h("p", { class: "empty", id }, emptyText);
    const num = numeric || [];
    return h("table", { id },
      h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { class: num[i] ? "num" : null }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: num[i] ? "num" : null }, c))))));
  }

  function alertMiniTable(alerts) {
    return listTable("device-alerts", ["Severity", "First / last", "Count", "Category", "Reason", "Status"],
      alerts.map((a) => [sevBadge(a.severity), `${fmtTime(a.first_ts)} / ${fmtTime(a.last_ts)}`, String(a.count),
        `${a.category} (${a.detector})`, h("span", { class: "reason" }, a.reason), statusCell(a)]), "No alerts.");
  }

  /** An SVG timeline: one lane per severity, a dot at each alert's time, a bar over its repeats. */
  function timeline(alerts, dev) {
    const W = 1000;
    const H = 190;
    const m = { l: 70, r: 20, t: 14, b: 38 };
    let lo = Math.min(dev.first_seen, ...alerts.map((a) => a.first_ts));
    let hi = Math.max(dev.last_seen, ...alerts.map((a) => a.last_ts));
    if (!(hi > lo)) { lo -= 60; hi += 60; }
    const x = (t) => m.l + ((t - lo) / (hi - lo)) * (W - m.l - m.r);
    const laneH = (H - m.t - m.b) / 3;
    const y = (sev) => m.t + (Math.min(Math.max(sev, 1), 3) - 0.5) * laneH;
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", id: "alert-timeline", role: "img",
      "aria-label": `timeline of ${alerts.length} alerts` });
    [1, 2, 3].forEach((s) => {
      g.appendChild(svg("rect", { class: "lane", x: m.l, y: m.t + (s - 1) * laneH + 1, width: W - m.l - m.r, height: laneH - 2 }));
      g.appendChild(svg("text", { x: m.l - 8, y: y(s) + 4, "text-anchor": "end", fill: SEV[s].color }, SEV[s].name));
    });
    const ticks = 6;
    for (let i = 0; i <= ticks; i += 1) {
      const t = lo + ((hi - lo) * i) / ticks;
      const d = new Date(t * 1000);
      g.appendChild(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: m.t, y2: H - m.b }));
      g.appendChild(svg("text", { x: x(t), y: H - m.b + 15, "text-anchor": "middle" },
        `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`));
      if (i === 0 || i === ticks) {
        g.appendChild(svg("text", { x: x(t), y: H - m.b + 29, "text-anchor": i === 0 ? "start" : "end", class: "muted" },
          `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} UTC`));
      }
    }
    g.appendChild(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    g.appendChild(svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    for (const a of alerts) {
      const color = (SEV[a.severity] || { color: "#888" }).color;
      const tip = svg("title", {}, `#${a.id} ${(SEV[a.severity] || {}).name || a.severity} ${a.category} ` +
        `(${a.detector}), ${a.count}x ${fmtTime(a.first_ts)} - ${fmtTime(a.last_ts)}\n${a.reason}`);
      const grp = svg("g", { class: "alert-mark", "data-alert": a.id });
      if (a.last_ts > a.first_ts) {
        grp.appendChild(svg("line", { x1: x(a.first_ts), x2: x(a.last_ts), y1: y(a.severity), y2: y(a.severity),
          stroke: color, "stroke-width": 4, "stroke-opacity": 0.45, "stroke-linecap": "round" }));
      }
      grp.appendChild(svg("circle", { cx: x(a.timestamp), cy: y(a.severity), r: 5 + Math.min(6, Math.log2(1 + a.count)),
        fill: color, "fill-opacity": a.acknowledged ? 0.35 : 0.9, stroke: "#333", "stroke-width": 0.6 }));
      grp.appendChild(tip);
      g.appendChild(grp);
    }
    if (!alerts.length) {
      g.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no alerts for this device"));
    }
    return g;
  }

  // -- the alert queue -----------------------------------------------------------------------------------

  function statusCell(a) {
    const parts = [];
    if (a.acknowledged) {
      parts.push(h("span", { class: "badge acked" }, "acknowledged"),
        h("div", { class: "note" }, `by ${a.acknowledged_by} at ${fmtTime(a.acknowledged_at)}`));
    } else {
      parts.push(h("span", { class: "badge open" }, "open"));
    }
    if (a.assignee) parts.push(h("div", { class: "note" }, `assigned to ${a.assignee}` + (a.assigned_by ? ` by ${a.assigned_by}` : "")));
    return h("div", { class: "status" }, parts);
  }

  async function renderAlerts(root) {
    const f = state.alerts;
    const acknowledged = f.status === "open" ? false : f.status === "acked" ? true : null;
    const filters = { severity: f.sev, category: f.category, device_id: f.device, acknowledged, event_type: f.eventType };
    const [page, facets, devices] = await Promise.all([
      api(`/alerts${qs({ ...filters, limit: f.limit, offset: f.offset })}`),
      api("/alerts/summary"),
      api("/devices?limit=1000"),
    ]);
    if (page.total > 0 && f.offset >= page.total) { f.offset = 0; return renderAlerts(root); }
    const labels = Object.fromEntries(devices.items.map((d) => [d.device_id, d.label]));
    const flash = h("div", { id: "alert-flash", hidden: true });
    append(root, [
      h("h1", {}, "Alerts"),
      h("p", { class: "note" }, "Every alert record, repeats merged per destination. The SOC's queue is the ",
        h("a", { href: "#/incidents" }, "incident queue"), " (alerts folded per device and cause)."),
      isAdmin() ? null : h("p", { class: "flash error", id: "readonly-note" },
        "This token is read-only (scope 'read'): the acknowledge and assign buttons are disabled."),
      alertFilters(facets, labels),
      flash,
      page.items.length === 0 ? h("p", { class: "empty" }, "No alert matches these filters.")
        : h("table", { class: "wide", id: "alert-table" },
          h("thead", {}, h("tr", {}, ["#", "Severity", "Last seen", "Device", "Category", "Reason", "Score", "Status", "Actions"]
            .map((t) => h("th", {}, t)))),
          h("tbody", {}, page.items.map((a) => alertRow(a, labels, flash)))),
      pager(page, f, "alerts"),
    ]);
  }

  function alertFilters(facets, labels) {
    const f = state.alerts;
    const change = (fn) => (e) => { fn(e.target); f.offset = 0; render(); };
    const cats = facets.by_category.map((c) => c.key);
    if (f.category && !cats.includes(f.category)) cats.push(f.category);
    const devs = facets.by_device.map((d) => d.key);
    if (f.device && !devs.includes(f.device)) devs.push(f.device);
    return h("form", { class: "filters", id: "alert-filters", onsubmit: (e) => e.preventDefault() },
      h("span", {}, "Severity"),
      [1, 2, 3].map((s) => h("label", { class: `sev${s}` },
        h("input", { type: "checkbox", name: "severity", value: String(s), checked: f.sev.includes(s),
          onchange: change((t) => { f.sev = t.checked ? [...f.sev, s].sort() : f.sev.filter((x) => x !== s); }) }),
        SEV[s].name)),
      h("label", {}, "Category", h("select", { id: "alert-filter-category", onchange: change((t) => { f.category = t.value; }) },
        h("option", { value: "" }, "any"), cats.map((c) => h("option", { value: c, selected: f.category === c }, c)))),
      h("label", {}, "Device", h("select", { id: "alert-filter-device", onchange: change((t) => { f.device = t.value; }) },
        h("option", { value: "" }, "any"),
        devs.map((d) => h("option", { value: d, selected: f.device === d }, labels[d] && labels[d] !== d ? `${labels[d]} (${d})` : d)))),
      h("label", {}, "Status", h("select", { id: "alert-filter-status", onchange: change((t) => { f.status = t.value; }) },
        [["open", "open"], ["acked", "acknowledged"], ["all", "all"]].map(([v, t]) => h("option", { value: v, selected: f.status === v }, t)))),
      h("label", {}, "Type", h("select", { id: "alert-filter-type", onchange: change((t) => { f.eventType = t.value; }) },
        [["", "any"], ["alert", "security alerts"], ["notice", "notices"], ["integrity", "integrity"], ["canary", "canary"]]
          .map(([v, t]) => h("option", { value: v, selected: f.eventType === v }, t)))),
      pageSizeSelect(f));
  }

  function alertRow(a, labels, flash) {
    const admin = isAdmin();
    const why = admin ? null : "needs a token with the admin scope";
    const assignee = h("input", { type: "text", class: "assignee", placeholder: "assignee", value: a.assignee || "",
      maxlength: 200, disabled: !admin, title: why, "aria-label": `assignee of alert ${a.id}` });
    const ackButton = h("button", { type: "button", class: "ack primary", disabled: !admin, title: why,
      onclick: () => act(a, "ack", { acknowledged: !a.acknowledged }, flash) }, a.acknowledged ? "Re-open" : "Acknowledge");
    const assignButton = h("button", { type: "button", class: "assign", disabled: !admin, title: why,
      onclick: () => act(a, "assign", { assignee: assignee.value.trim() || null }, flash) }, "Assign");
    return h("tr", { dataset: { alert: a.id }, class: a.acknowledged ? null : `open sev${a.severity}-row` },
      h("td", { class: "num" }, String(a.id)),
      h("td", {}, sevBadge(a.severity)),
      h("td", {}, fmtTime(a.last_ts), a.count > 1 ? h("div", { class: "note" }, `${a.count}x since ${fmtTime(a.first_ts)}`) : null),
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(a.device_id)}` }, labels[a.device_id] || a.device_id)),
      h("td", {}, a.category, h("div", { class: "note" }, a.detector),
        a.incident_id ? h("div", { class: "note" }, h("a", { href: `#/incident/${encodeURIComponent(a.incident_id)}` }, "incident")) : null),
      h("td", { class: "reason" }, a.reason,
        h("div", { class: "note mono" }, `${a.src_ip}:${a.src_port} \u2192 ${a.dest_ip}:${a.dest_port}/${a.proto.toLowerCase()}`)),
      h("td", { class: "num" }, fmtNum(a.score), h("div", { class: "note" }, `threshold ${fmtNum(a.threshold)}`)),
      h("td", {}, statusCell(a)),
      h("td", {}, h("div", { class: "actions" }, ackButton, assignee, assignButton)));
  }

  async function act(a, what, body, flash) {
    const buttons = document.querySelectorAll(`tr[data-alert="${a.id}"] button`);
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const done = await api(`/alerts/${a.id}/${what}`, { method: "POST", body });
      const msg = what === "ack"
        ? `Alert #${done.id} ${done.acknowledged ? `acknowledged by ${done.acknowledged_by}` : "re-opened"}.`
        : `Alert #${done.id} ${done.assignee ? `assigned to ${done.assignee}` : "unassigned"} by ${done.assigned_by}.`;
      await render();
      const f2 = $("alert-flash");
      if (f2) { f2.className = "flash"; f2.textContent = msg; f2.hidden = false; }
    } catch (e) {
      if (e.status === 401) return;
      flash.className = "flash error";
      flash.hidden = false;
      if (e.status === 403) {
        flash.textContent = `Not allowed (403): ${e.detail}. Log in with an admin token to acknowledge or assign alerts.`;
        document.querySelectorAll("#alert-table button, #alert-table input.assignee").forEach((b) => { b.disabled = true; });
      } else {
        flash.textContent = `Could not ${what === "ack" ? "acknowledge" : "assign"} alert #${a.id}: ${e.message}`;
        buttons.forEach((b) => { b.disabled = false; });
      }
    }
  }

  // -- the incident queue --------------------------------------------------------------------------------

  function statusBadge(status) {
    return h("span", { class: `badge st-${status}`, dataset: { status } }, status);
  }

  /** The incident filters as API query parameters ("active": open and acknowledged). */
  function incidentQuery(f) {
    const status = f.status === "active" ? ["open", "acknowledged"] : f.status === "all" ? [] : [f.status];
    return { status, min_severity: f.minSev, cause: f.cause, device_id: f.device };
  }

  async function renderIncidents(root) {
    const f = state.incidents;
    const filters = incidentQuery(f);
    const [page, summary, facets, devices, notices, noticeCount] = await Promise.all([
      api(`/incidents${qs({ ...filters, limit: f.limit, offset: f.offset })}`),
      api("/incidents/summary"),
      api(`/incidents/summary${qs({ status: filters.status })}`),
      api("/devices?limit=1000"),
      api("/alerts?event_type=notice&limit=10"),
      api("/alerts/summary"),
    ]);
    if (page.total > 0 && f.offset >= page.total) { f.offset = 0; return renderIncidents(root); }
    const labels = Object.fromEntries(devices.items.map((d) => [d.device_id, d.label]));
    const byStatus = Object.fromEntries(summary.by_status.map((r) => [r.key, r.total]));
    const flash = h("div", { id: "incident-flash", hidden: true });
    append(root, [
      h("h1", {}, "Incident queue"),
      h("p", { class: "note" }, "Alerts folded per device and cause. Repeats of a cause count into its incident; " +
        "a more severe alert or a new kind of evidence escalates it (and re-opens an acknowledged one). " +
        "Marking an incident expected asks the baseline to absorb the behaviour, for the device or its whole group."),
      h("div", { class: "cards", id: "incident-cards" },
        INCIDENT_STATUS.map((st) => h("div", { class: `card st-${st}` },
          h("div", { class: "v", id: `incidents-${st}` }, String(byStatus[st] || 0)), h("div", { class: "k" }, `${st}`))),
        h("div", { class: "card notices" }, h("div", { class: "v", id: "notices-total" }, String(noticeCount.notices.total)),
          h("div", { class: "k" }, "notices (not alerts)"))),
      isAdmin() ? null : h("p", { class: "flash error", id: "readonly-note" },
        "This token is read-only (scope 'read'): the incident buttons are disabled."),
      incidentFilters(facets, labels),
      flash,
      page.items.length === 0 ? h("p", { class: "empty" }, "No incident matches these filters.")
        : h("table", { class: "wide", id: "incident-table" },
          h("thead", {}, h("tr", {}, ["Status", "Severity", "Device", "Cause", "Alerts", "First seen", "Last seen",
            "Assignee", "Actions"].map((t) => h("th", {}, t)))),
          h("tbody", {}, page.items.map((i) => incidentRow(i, labels, flash)))),
      pager(page, f, "incidents"),
      h("h2", {}, `Notices (${noticeCount.notices.total})`),
      h("p", { class: "note" }, "Not security alerts: a device that fell silent or went offline. Counted apart, never an incident."),
      listTable("notice-table", ["Last seen", "Device", "Category", "Count", "Reason"],
        notices.items.map((n) => [fmtTime(n.last_ts),
          h("a", { href: `#/device/${encodeURIComponent(n.device_id)}` }, labels[n.device_id] || n.device_id),
          n.category, String(n.count), h("span", { class: "reason" }, n.reason)]), "No notices."),
    ]);
  }

  function incidentFilters(facets, labels) {
    const f = state.incidents;
    const change = (fn) => (e) => { fn(e.target); f.offset = 0; render(); };
    const causes = facets.by_cause.map((c) => c.key);
    if (f.cause && !causes.includes(f.cause)) causes.push(f.cause);
    const devs = facets.by_device.map((d) => d.key);
    if (f.device && !devs.includes(f.device)) devs.push(f.device);
    return h("form", { class: "filters", id: "incident-filters", onsubmit: (e) => e.preventDefault() },
      h("label", {}, "Status", h("select", { id: "incident-filter-status", onchange: change((t) => { f.status = t.value; }) },
        [["active", "open or acknowledged"], ...INCIDENT_STATUS.map((s) => [s, s]), ["all", "all"]]
          .map(([v, t]) => h("option", { value: v, selected: f.status === v }, t)))),
      h("label", {}, "Severity", h("select", { id: "incident-filter-severity", onchange: change((t) => { f.minSev = t.value; }) },
        [["", "any"], ["1", "high"], ["2", "medium or higher"]].map(([v, t]) => h("option", { value: v, selected: f.minSev === v }, t)))),
      h("label", {}, "Cause", h("select", { id: "incident-filter-cause", onchange: change((t) => { f.cause = t.value; }) },
        h("option", { value: "" }, "any"), causes.map((c) => h("option", { value: c, selected: f.cause === c }, c)))),
      h("label", {}, "Device", h("select", { id: "incident-filter-device", onchange: change((t) => { f.device = t.value; }) },
        h("option", { value: "" }, "any"),
        devs.map((d) => h("option", { value: d, selected: f.device === d }, labels[d] && labels[d] !== d ? `${labels[d]} (${d})` : d)))),
      pageSizeSelect(f));
  }

  /** The action buttons of an incident (disabled for read-only tokens); ``scope`` of the assignee box. */
  function incidentActions(i, flash, where) {
    const admin = isAdmin();
    const why = admin ? null : "needs a token with the admin scope";
    const btn = (cls, text, what, body, enabled) => h("button", { type: "button", class: cls, disabled: !admin || !enabled,
      title: why, onclick: () => incidentAct(i, what, body(), flash, where) }, text);
    const assignee = h("input", { type: "text", class: "assignee", placeholder: "assignee", value: i.assignee || "",
      maxlength: 200, disabled: !admin, title: why, "aria-label": `assignee of incident ${i.incident_id}` });
    const active = i.status === "open" || i.status === "acknowledged";
    return h("div", { class: "actions" },
      btn("ack primary", "Acknowledge", "acknowledge", () => ({}), i.status === "open"),
      btn("expect-device", "Expected (device)", "expected", () => ({ scope: "device" }), i.status !== "expected"),
      btn("expect-group", "Expected (group)", "expected", () => ({ scope: "group" }), i.status !== "expected"),
      btn("resolve", "Resolve", "resolve", () => ({}), i.status !== "resolved"),
      btn("reopen", "Reopen", "reopen", () => ({}), !active),
      assignee,
      h("button", { type: "button", class: "assign", disabled: !admin, title: why,
        onclick: () => incidentAct(i, "assign", { assignee: assignee.value.trim() || null }, flash, where) }, "Assign"));
  }

  function incidentRow(i, labels, flash) {
    return h("tr", { dataset: { incident: i.incident_id }, class: i.status === "open" ? `open sev${i.severity}-row` : null },
      h("td", {}, statusBadge(i.status)),
      h("td", {}, sevBadge(i.severity)),
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(i.device_id)}` }, labels[i.device_id] || i.device_id)),
      h("td", {}, h("a", { href: `#/incident/${encodeURIComponent(i.incident_id)}`, class: "incident-link" }, i.cause),
        h("div", { class: "note" }, i.categories.join(", "))),
      h("td", { class: "num" }, String(i.count)),
      h("td", {}, fmtTime(i.first_ts)),
      h("td", {}, fmtTime(i.last_ts)),
      h("td", { class: "assignee-cell" }, i.assignee || h("span", { class: "muted" }, "-")),
      h("td", {}, incidentActions(i, flash, "queue")));
  }

  const DONE = { acknowledge: "acknowledged", expected: "marked expected", resolve: "resolved", reopen: "re-opened" };

  async function incidentAct(i, what, body, flash, where) {
    const scope = where === "queue" ? `tr[data-incident="${i.incident_id}"]` : "#incident-actions";
    const buttons = document.querySelectorAll(`${scope} button`);
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const done = await api(`/incidents/${encodeURIComponent(i.incident_id)}/${what}`, { method: "POST", body });
      const last = done.history[done.history.length - 1] || { actor: "?" };
      let msg;
      if (what === "assign") msg = `Incident ${done.incident_id} ${done.assignee ? `assigned to ${done.assignee}` : "unassigned"} by ${last.actor}.`;
      else if (what === "expected") msg = `Incident ${done.incident_id} marked expected (${body.scope}) by ${last.actor}: the baseline is asked to absorb it.`;
      else msg = `Incident ${done.incident_id} ${DONE[what]} by ${last.actor}.`;
      await render();
      const f2 = $("incident-flash");
      if (f2) { f2.className = "flash"; f2.textContent = msg; f2.hidden = false; }
    } catch (e) {
      if (e.status === 401) return;
      flash.className = "flash error";
      flash.hidden = false;
      if (e.status === 403) {
        flash.textContent = `Not allowed (403): ${e.detail}. Log in with an admin token to change incidents.`;
      } else {
        flash.textContent = `Could not ${what} incident ${i.incident_id}: ${e.message}`;
        buttons.forEach((b) => { b.disabled = false; });
      }
    }
  }

  // -- one incident -----------------------------------------------------------------------------------

  async function renderIncident(root, id) {
    let inc;
    try {
      inc = await api(`/incidents/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status === 404 || e.status === 422) {
        append(root, [h("p", {}, h("a", { href: "#/incidents" }, "\u2190 incident queue")),
          h("p", { class: "error" }, `No incident ${id} in the store.`)]);
        return;
      }
      throw e;
    }
    const flash = h("div", { id: "incident-flash", hidden: true });
    append(root, [
      h("p", {}, h("a", { href: "#/incidents" }, "\u2190 incident queue")),
      h("h1", { id: "incident-title" }, `${inc.cause} on `, h("a", { href: `#/device/${encodeURIComponent(inc.device_id)}` }, inc.device_id),
        " ", statusBadge(inc.status), " ", sevBadge(inc.severity)),
      flash,
      h("div", { id: "incident-actions" }, incidentActions(inc, flash, "page")),
      kvTable([
        ["Incident", h("span", { class: "mono" }, inc.incident_id)],
        ["Status", h("span", { id: "incident-status" }, inc.status)],
        ["Severity", `${inc.severity_name} (most severe alert)`],
        ["Site / device", `${inc.site_id} / ${inc.device_id}`],
        ["Cause", `${inc.cause}: ${inc.categories.join(", ")}`],
        ["Evidence kinds", inc.evidence_kinds.join(", ")],
        ["Alerts", String(inc.count)],
        ["First / last seen", `${fmtTime(inc.first_ts)} / ${fmtTime(inc.last_ts)}`],
        ["Assignee", h("span", { id: "incident-assignee" }, inc.assignee || "-")],
        ["Follows", inc.previous_id ? h("a", { href: `#/incident/${encodeURIComponent(inc.previous_id)}` }, inc.previous_id) : "-"],
      ], "incident-facts"),
      h("h2", {}, `Evidence (${inc.evidence.length} samples)`),
      listTable("incident-evidence", ["Time", "Category", "Feature", "Severity", "Destination", "Score", "Reason"],
        inc.evidence.map((s) => [fmtTime(s.ts), s.category, s.feature || "-", s.severity ? sevBadge(s.severity) : "-",
          h("span", { class: "mono" }, `${s.dest_ip}:${s.dest_port}/${s.proto.toLowerCase()}`), fmtNum(s.score),
          h("span", { class: "reason" }, s.reason)]), "No evidence."),
      h("h2", {}, `Alerts (${inc.alerts.length})`),
      listTable("incident-alerts", ["#", "Severity", "First / last", "Count", "Category", "Reason"],
        inc.alerts.map((a) => [String(a.id), sevBadge(a.severity), `${fmtTime(a.first_ts)} / ${fmtTime(a.last_ts)}`,
          String(a.count), `${a.category} (${a.detector})`, h("span", { class: "reason" }, a.reason)]), "No alert rows."),
      h("h2", {}, "History"),
      listTable("incident-history", ["When", "Action", "By", "Value", "Note"],
        inc.history.map((x) => [fmtTime(x.at), x.action, x.actor, x.value || "-", x.note || "-"]), "No actions yet."),
      h("h2", {}, "Baseline feedback"),
      listTable("incident-feedback", ["#", "Action", "Scope", "Requested", "By", "Applied", "Result"],
        inc.feedback.map((x) => [String(x.id), x.action, x.scope, fmtTime(x.created), x.created_by,
          x.applied_at ? fmtTime(x.applied_at) : "pending", x.result || "-"]), "None: the incident was never marked expected."),
    ]);
  }

  // -- models and integrity ---------------------------------------------------------------------------

  async function renderModels(root) {
    const [health, models, runs, canaries] = await Promise.all([api("/health"), api("/models"), api("/runs?limit=10"),
      api("/integrity/canaries?limit=20")]);
    append(root, [
      h("h1", {}, "Models & integrity"),
      h("h2", {}, "API and store health"),
      kvTable([
        ["Status", h("span", { class: `badge ${health.status === "ok" ? "ok" : "degraded"}`, id: "health-status" }, health.status)],
        ["Store reachable", health.store_reachable ? "yes" : "no"],
        ["Schema version", `${health.schema_version ?? "-"} (expected ${health.expected_schema_version})`],
        ["Problem", health.error || "none"],
      ], "health-table"),
      h("h2", {}, "Model artifacts"),
      h("p", { class: "note" }, "Signatures (Ed25519) are verified against the trusted keys on every request; " +
        "'not_checked' means the API was started without --keyring."),
      listTable("models-table", ["Model", "Detector", "Version", "Signature", "Key", "Signed at", "Files", "Problem"],
        models.map((mo) => {
          const man = mo.manifest || {};
          const s = mo.signature;
          return [h("span", { title: mo.path }, mo.name), man.detector ?? "-", man.version ?? "-",
            h("span", { class: `badge ${s.status}`, dataset: { model: mo.name } }, s.status),
            h("span", { class: "mono" }, s.key_id || "-"), s.signed_at || "-",
            `${mo.files.length} (${fmtBytes(mo.files.reduce((n, x) => n + x.size, 0))})`,
            mo.manifest_error || s.error || "-"];
        }), "No model directories configured (start the API with --model-dir DIR --keyring KEYDIR)."),
      h("h2", {}, "Canary coverage per attack class"),
      h("p", { class: "note" }, "The monitor (iotsentry serve) replays synthetic attacks of each class through its " +
        "detector; a missed class means the detector is blind to it and raises a detector-blind integrity alert."),
      canaryTable("canary-table", canaries.latest, "No canary runs in the store yet (iotsentry serve runs them " +
        "when [canary] interval_s is set)."),
      canaries.history.total > canaries.latest.length
        ? h("details", { id: "canary-history" },
          h("summary", {}, `History (${canaries.history.items.length} most recent of ${canaries.history.total})`),
          canaryTable("canary-history-table", canaries.history.items, "No canary runs."))
        : null,
      h("h2", {}, "Recent runs"),
      listTable("runs-table", ["Run", "Command", "Status", "Started", "Took", "Inputs", "Packets", "Devices"],
        runs.items.map((r) => [String(r.id), r.command, h("span", { class: `badge ${r.status === "ok" ? "ok" : r.status === "failed" ? "degraded" : ""}` }, r.status),
          fmtTime(r.started), r.finished ? fmtDuration(r.finished - r.started) : "-",
          Array.isArray(r.inputs) ? r.inputs.join(", ") : JSON.stringify(r.inputs),
          fmtNum(r.stats.packets), fmtNum(r.stats.devices)]), "No runs in the store."),
    ]);
  }

  /** Canary results: class, last run, detected yes/no, score / threshold, detector, device. */
  function canaryTable(id, results, emptyText) {
    return listTable(id, ["Attack class", "Last run", "Detected", "Score / threshold", "Detector", "Device"],
      results.map((c) => [
        h("span", { dataset: { canaryClass: c.attack_class } }, c.attack_class),
        fmtTime(c.ts),
        h("span", { class: `badge ${c.detected ? "ok" : "degraded"}`, dataset: { detected: c.detected ? "yes" : "no" } },
          c.detected ? "yes" : "no"),
        `${fmtNum(c.score, 3)} / ${fmtNum(c.threshold, 3)}`,
        c.detector,
        h("span", { class: "mono" }, c.device_id || "-"),
      ]), emptyText, [false, false, false, true, false, false]);
  }

  // -- start -----------------------------------------------------------------------------------------

  function start() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) { showLogin("Paste a token first."); return; }
      login(token, true);
    });
    $("logout").addEventListener("click", () => logout("Logged out."));
    window.addEventListener("hashchange", () => render());
    let saved = null;
    try { saved = sessionStorage.getItem(TOKEN_KEY); } catch (e) { saved = null; }
    if (saved) login(saved, true);
    else showLogin("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

// weft ui: draws the cluster's snapshot (from /api/events, Server-Sent
// Events; /api/state once if EventSource is missing). Every value is put in
// the page as text (textContent), never as HTML.
"use strict";

const TERMINAL = new Set(["exited", "failed", "rejected", "shutdown"]);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A service's colour: a hue from its name, kept off red (failures' colour).
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 280;
  return 40 + h;
}

function age(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s ago";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m ago";
}

function shown(t) {
  return t.desired === "running" || !TERMINAL.has(t.state);
}

function taskChip(t) {
  const name = t.service || t.name;
  const label = `${t.name}: ${t.state}${t.health ? " (" + t.health + ")" : ""}${t.error ? ", " + t.error : ""}`;
  const chip = el("li", {
    class: "task", tabindex: 0, title: label, "aria-label": label,
    "data-service": t.service, "data-state": t.state, "data-health": t.health || null, "data-task": t.id,
  }, t.state === "running" ? t.name : `${t.name} (${t.state})`);
  // Through the CSSOM: the page's CSP allows no inline style attributes.
  chip.style.setProperty("--hue", String(hue(name)));
  return chip;
}

function overlayLine(net, p) {
  const parts = [`${net.name}: config ${p.applied_version}/${p.config_version}`];
  if (p.behind > 0) parts.push(`behind ${p.behind}`);
  if (p.apply_error) parts.push(`error: ${p.apply_error}`);
  if (net.encrypted) parts.push(`handshake ${age(p.handshake_age_ms)}`);
  const warn = p.behind > 0 || p.apply_error || p.stale_handshake;
  return el("li", { class: warn ? "short" : null }, parts.join(", "));
}

function nodeCard(n, tasks, networks) {
  const classes = ["node"];
  if (n.state !== "Ready") classes.push("down");
  if (n.behind) classes.push("behind");
  if (n.stale_handshake) classes.push("stale");
  const mine = tasks.filter((t) => t.node_id === n.id && shown(t));
  const overlays = [];
  for (const net of networks) {
    for (const p of net.peers) if (p.node_id === n.id) overlays.push(overlayLine(net, p));
  }
  const title = `${n.hostname}, ${n.role}${n.leader ? " (leader)" : ""}, ${n.state}, ${n.availability}` +
    `${n.behind ? ", behind on network config" : ""}${n.stale_handshake ? ", stale WireGuard handshake" : ""}`;
  return el("article", { class: classes.join(" "), tabindex: 0, "aria-label": title, "data-hostname": n.hostname, "data-node": n.id },
    el("h3", {},
      el("span", { class: "hostname" }, n.hostname),
      el("span", { class: "badge" }, n.role),
      n.leader && el("span", { class: "badge leader" }, "leader"),
      el("span", { class: "badge " + n.state.toLowerCase() }, n.state),
      n.availability !== "Active" && el("span", { class: "badge" }, n.availability),
      n.behind && el("span", { class: "flag" }, "behind"),
      n.stale_handshake && el("span", { class: "flag" }, "stale handshake")),
    el("p", { class: "meta" },
      `${n.addr || "-"} · v${n.version || "?"} · cert until ${n.cert_expiry || "-"}`,
      n.state_message && ` · ${n.state_message}`),
    mine.length ? el("ul", { class: "tasks", "aria-label": `tasks on ${n.hostname}` }, mine.map(taskChip))
      : el("p", { class: "none" }, "no tasks"),
    overlays.length ? el("ul", { class: "overlays", "aria-label": `networks on ${n.hostname}` }, overlays)
      : el("p", { class: "none" }, "no overlay networks"));
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const cols = document.querySelectorAll(`#${id} thead th`).length;
    body.append(el("tr", {}, el("td", { colspan: cols, class: "none" }, "none")));
  }
}

function networkRow(net) {
  const peers = net.peers.map((p) => {
    const bits = [`${p.hostname}: ${p.applied_version}/${p.config_version}`];
    if (p.apply_error) bits.push(`error: ${p.apply_error}`);
    if (net.encrypted) bits.push(`${p.tunnel_ip || "-"}, handshake ${age(p.handshake_age_ms)}`);
    return el("li", { class: p.behind > 0 || p.apply_error || p.stale_handshake ? "short" : null, "data-peer": p.hostname },
      bits.join(", "));
  });
  const flags = [net.scope === "local" && "local", net.internal && "internal", net.attachable && "attachable",
    net.ingress && "ingress"].filter(Boolean);
  return el("tr", { "data-network": net.name },
    el("th", { scope: "row" }, net.name, flags.length ? ` (${flags.join(", ")})` : ""),
    el("td", {}, net.driver), el("td", {}, net.subnet || "-"),
    el("td", { class: "num", title: net.mtu_limited_by ? `set by ${net.mtu_limited_by}` : null },
      net.mtu || "-", net.mtu_limited_by && el("small", { class: "by" }, ` (${net.mtu_limited_by})`)), el("td", { class: "num" }, net.vni || "-"),
    el("td", {}, net.encrypted ? "yes" : "no"),
    el("td", {}, net.endpoints.length ? el("ul", { class: "endpoints" },
      net.endpoints.map((e) => el("li", { "data-endpoint": e.name }, `${e.name} ${e.ip || "-"} (${e.node || "-"})`))) : "-"),
    el("td", {}, peers.length ? el("ul", { class: "peers" }, peers) : "-"));
}

function serviceRow(s) {
  return el("tr", { "data-service-row": s.name },
    el("th", { scope: "row" }, s.name), el("td", {}, s.mode),
    el("td", { class: "num " + (s.running < s.desired ? "short" : "") }, `${s.running}/${s.desired}`),
    el("td", {}, s.image || "(host process)"),
    el("td", {}, s.vips.map((v) => `${v.network}=${v.vip}`).join(", ") || "-"),
    el("td", {}, s.ports.map((p) => `${p.published}->${p.target}/${p.protocol}`).join(", ") || "-"),
    el("td", {}, s.update_status || "-"));
}

function taskRow(t) {
  const bad = t.state === "failed" || t.state === "rejected";
  return el("tr", {},
    el("th", { scope: "row" }, t.name), el("td", {}, t.service || "(standalone)"),
    el("td", {}, t.hostname || "-"), el("td", {}, t.desired),
    el("td", { class: bad ? "bad" : null }, t.state + (t.health ? ` (${t.health})` : "")),
    el("td", {}, t.addresses.join(", ") || "-"), el("td", {}, t.error || ""));
}

function eventItem(e) {
  const when = e.time_ms ? new Date(e.time_ms) : null;
  return el("li", {},
    el("time", when ? { datetime: when.toISOString() } : {}, when ? when.toLocaleTimeString() : "-"),
    `${e.type} ${e.action} ${e.name || e.id}`);
}

function render(s) {
  const ready = s.nodes.filter((n) => n.state === "Ready").length;
  const running = s.tasks.filter((t) => t.state === "running").length;
  document.getElementById("summary").textContent =
    `${s.nodes.length} nodes (${ready} ready) · ${s.networks.length} networks · ${s.services.length} services · ${running} running tasks`;
  const status = document.getElementById("status");
  status.classList.toggle("error", !!s.error);
  status.textContent = s.error ? `Cannot read the cluster: ${s.error}` :
    `Live · read at ${new Date(s.generated_ms).toLocaleTimeString()}`;
  document.getElementById("topology").replaceChildren(...s.nodes.map((n) => nodeCard(n, s.tasks, s.networks)));
  fill("networks", s.networks.map(networkRow));
  fill("services", s.services.map(serviceRow));
  fill("tasks", s.tasks.filter(shown).map(taskRow));
  document.getElementById("events").replaceChildren(...s.events.slice().reverse().map(eventItem));
  window.weftSnapshot = s;
}

function start() {
  const status = document.getElementById("status");
  if (!window.EventSource) {
    fetch("/api/state").then((r) => r.json()).then(render);
    return;
  }
  const source = new EventSource("/api/events");
  source.onmessage = (m) => render(JSON.parse(m.data));
  source.onerror = () => {
    status.classList.add("error");
    status.textContent = "Disconnected from weft ui; retrying…";
  };
}

document.addEventListener("DOMContentLoaded", start);

// primus: the operator's page. Opens the coordinator's event stream (/ui/stream)
// and puts each section it sends in place; no reload, no library, nothing fetched
// from elsewhere. The stream is read with fetch() rather than EventSource so that
// the token (when reads need one) travels in a header, never in a URL.
"use strict";
(function () {
  const body = document.body;
  const streamUrl = body.dataset.stream;
  const TOKEN_KEY = "primus-token";
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let wakeStream = null;

  const $ = (id) => document.getElementById(id);

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function setConn(text, cls) {
    const el = $("conn");
    el.textContent = text;
    el.className = "conn " + cls;
  }

  function notice(text, cls) {
    const el = $("notice");
    if (!text) {
      el.hidden = true;
      return;
    }
    el.textContent = text;
    el.className = "notice " + (cls || "");
    el.hidden = false;
  }

  function localTimes(root) {
    for (const t of root.querySelectorAll("time[datetime]")) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.title = t.getAttribute("datetime");
        t.textContent = d.toLocaleString(undefined, {
          year: "numeric", month: "2-digit", day: "2-digit",
          hour: "2-digit", minute: "2-digit", second: "2-digit",
        });
      }
    }
  }

  function showTokenState() {
    const b = $("token-button");
    b.textContent = token ? "actions enabled" : "read-only";
    b.classList.toggle("armed", !!token);
    body.classList.toggle("can-act", !!token);
  }

  // One server-sent event block: "event: NAME\ndata: …\ndata: …".
  function dispatch(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    // An emptied section (a banner gone) may come with no data line at all.
    if (data.length === 0 && name === "message") return;
    const el = $("s-" + name);
    if (!el) return;
    el.innerHTML = data.join("\n");
    localTimes(el);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    body.dataset.updates = String(Number(body.dataset.updates || "0") + 1);
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function follow() {
    let delay = 250;
    for (;;) {
      try {
        const resp = await fetch(streamUrl, { headers: authHeaders(), cache: "no-store" });
        if (resp.status === 401 || resp.status === 403) {
          setConn("token needed", "bad");
          notice("This coordinator requires its [auth] token for reads: enter it with the button at the top right.", "bad");
          await new Promise((r) => { wakeStream = r; });
          continue;
        }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        setConn("live", "ok");
        body.dataset.live = "1";
        notice("");
        delay = 250;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            dispatch(buf.slice(0, i));
            buf = buf.slice(i + 2);
          }
        }
      } catch (e) {
        // Reconnect below.
      }
      body.dataset.live = "0";
      setConn("reconnecting…", "bad");
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  }

  // ---- the token ----
  $("token-button").addEventListener("click", () => {
    $("token-input").value = token;
    $("token-dialog").showModal();
  });
  $("token-dialog").addEventListener("close", () => {
    const v = $("token-dialog").returnValue;
    if (v === "save") token = $("token-input").value.trim();
    if (v === "clear") token = "";
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    if (wakeStream) {
      const w = wakeStream;
      wakeStream = null;
      w();
    }
  });

  // ---- actions: each behind a confirmation naming the cluster ----
  const ACTIONS = {
    "switchover": {
      title: (c) => "Switch over cluster " + c + "?",
      text: "The primary is demoted gracefully and the best replica (or the one named here) is promoted. Writes pause for the switchover.",
      fields: '<label>Promote (host:port, empty lets primus choose) <input id="f-to" autocomplete="off"></label>',
      request: (c) => ({ path: "switchover", body: { to: $("f-to").value.trim() || undefined } }),
    },
    "maintenance-start": {
      title: (c) => "Start maintenance of cluster " + c + "?",
      text: "No automatic failover of this cluster until it ends (by itself, after the duration).",
      fields: '<label>Reason <input id="f-reason" autocomplete="off"></label>' +
        '<label>Duration (minutes) <input id="f-minutes" type="number" min="1" value="60"></label>',
      request: () => ({
        path: "maintenance",
        body: { start: true, reason: $("f-reason").value.trim(), duration_s: 60 * Number($("f-minutes").value || "60") },
      }),
    },
    "maintenance-end": {
      title: (c) => "End maintenance of cluster " + c + "?",
      text: "Automatic failover of this cluster resumes (unless switched off otherwise).",
      fields: "",
      request: () => ({ path: "maintenance", body: { start: false } }),
    },
    "ack": {
      title: (c) => "Acknowledge the failovers of cluster " + c + "?",
      text: "Every failover of this cluster not yet acknowledged is marked as seen by an operator.",
      fields: "",
      request: () => ({ path: "ack", body: {} }),
    },
  };
  let pending = null;

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b || b.disabled) return;
    const a = ACTIONS[b.dataset.action];
    if (!a) return;
    const cluster = b.dataset.cluster;
    pending = { action: a, cluster: cluster, name: b.dataset.action };
    $("confirm-title").textContent = a.title(cluster);
    $("confirm-text").textContent = a.text;
    $("confirm-fields").innerHTML = a.fields;
    $("confirm-input").value = "";
    $("confirm-input").placeholder = cluster;
    $("confirm-ok").disabled = true;
    $("confirm-dialog").showModal();
  });
  $("confirm-input").addEventListener("input", () => {
    $("confirm-ok").disabled = !pending || $("confirm-input").value !== pending.cluster;
  });
  $("confirm-dialog").addEventListener("close", async () => {
    const p = pending;
    pending = null;
    if (!p || $("confirm-dialog").returnValue !== "ok" || $("confirm-input").value !== p.cluster) return;
    const r = p.action.request(p.cluster);
    notice(p.name + " of " + p.cluster + ": sent…", "wait");
    try {
      const resp = await fetch("/api/v1/clusters/" + encodeURIComponent(p.cluster) + "/" + r.path, {
        method: "POST",
        headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
        body: JSON.stringify(Object.assign({ actor: "web page" }, r.body)),
      });
      const answer = await resp.json().catch(() => ({}));
      if (resp.ok) {
        let what = p.name + " of " + p.cluster + ": done";
        if (answer && answer.outcome) what += " (" + answer.outcome + ")";
        notice(what, "ok");
      } else {
        notice(p.name + " of " + p.cluster + " refused (HTTP " + resp.status + "): " + (answer.error || resp.statusText), "bad");
      }
    } catch (e) {
      notice(p.name + " of " + p.cluster + " failed: " + e, "bad");
    }
  });

  showTokenState();
  follow();
})();

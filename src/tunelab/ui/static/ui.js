/* tunelab dashboard: charts (uPlot) and the pages' polling of the JSON endpoints, every 2 s. */
"use strict";
window.tunelab = (function () {
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const charts = {};

  async function getJSON(url) {
    const r = await fetch(url, {credentials: "same-origin"});
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  function drawCharts(box, list) {
    const seen = new Set();
    for (const c of list) {
      seen.add(c.title);
      const data = [c.x, ...c.series.map(s => s.values)];
      const existing = charts[c.title];
      if (existing && existing.series.length === c.series.length + 1) {
        existing.setData(data);
        continue;
      }
      if (existing) { existing.destroy(); }
      let holder = box.querySelector('[data-chart="' + CSS.escape(c.title) + '"]');
      if (!holder) {
        holder = document.createElement("div");
        holder.className = "chart";
        holder.dataset.chart = c.title;
        box.appendChild(holder);
      }
      holder.innerHTML = "";
      const opts = {
        title: c.title, width: Math.min(560, box.clientWidth || 560), height: 240,
        scales: {x: {time: false}},
        series: [{label: "step"}, ...c.series.map((s, i) => ({label: s.label, stroke: COLORS[i % COLORS.length],
                                                              width: 1.5, spanGaps: true}))],
        axes: [{label: "step"}, {}],
      };
      charts[c.title] = new uPlot(opts, data, holder);
    }
    for (const title of Object.keys(charts)) {
      if (!seen.has(title)) {
        charts[title].destroy();
        delete charts[title];
        const holder = box.querySelector('[data-chart="' + CSS.escape(title) + '"]');
        if (holder) holder.remove();
      }
    }
  }

  function poll(fn, ms) {
    let stopped = false;
    async function tick() {
      if (stopped) return;
      let again = true;
      try { again = (await fn()) !== false; } catch (e) { console.warn(e); }
      if (again) setTimeout(tick, ms);
    }
    tick();
    return () => { stopped = true; };
  }

  function text(el, value) { if (el) el.textContent = value; }

  function runsPage() {
    const body = document.querySelector("#runs tbody");
    const params = new URLSearchParams(location.search);
    poll(async () => {
      const data = await getJSON("/api/runs?" + params.toString());
      const shown = [...body.querySelectorAll("tr[data-name]")].map(row => row.dataset.name).sort().join("\n");
      if (data.runs.map(r => r.name).sort().join("\n") !== shown) { location.reload(); return false; }
      for (const r of data.runs) {
        const row = body.querySelector('tr[data-name="' + CSS.escape(r.name) + '"]');
        if (!row) continue;
        const badge = row.querySelector(".badge");
        badge.className = "badge " + r.status;
        text(badge, r.status);
        text(row.querySelector(".step"), r.step);
      }
    }, 2000);
    document.getElementById("compare-selected").addEventListener("click", () => {
      const picked = [...document.querySelectorAll(".pick:checked")].map(b => "runs=" + encodeURIComponent(b.value));
      if (picked.length) location.href = "/compare?" + picked.join("&");
    });
  }

  function runPage(name) {
    const path = name.split("/").map(encodeURIComponent).join("/");
    const box = document.getElementById("charts");
    const message = document.getElementById("action-message");
    let wasRunning = document.getElementById("status").textContent === "running";
    poll(async () => {
      const data = await getJSON("/api/run/" + path + "/live");
      // A run that has just ended wrote its evaluation, diagnosis and checkpoints: show them.
      if (wasRunning && data.run.status !== "running") { location.reload(); return false; }
      wasRunning = data.run.status === "running";
      const status = document.getElementById("status");
      status.className = "badge " + data.run.status;
      text(status, data.run.status);
      text(document.getElementById("step"), data.run.step);
      text(document.getElementById("log"), data.log);
      drawCharts(box, data.charts);
      document.getElementById("stop").disabled = data.run.status !== "running";
      document.getElementById("resume").disabled = data.run.status === "running" || data.run.status === "finished";
    }, 2000);
    async function act(what) {
      const r = await fetch("/api/run/" + path + "/" + what, {method: "POST", credentials: "same-origin"});
      const body = await r.json();
      text(message, r.ok ? (what === "stop" ? "stopping…" : "resumed") : body.error);
    }
    document.getElementById("stop").addEventListener("click", () => act("stop"));
    document.getElementById("resume").addEventListener("click", () => act("resume"));
  }

  function comparePage(names) {
    const box = document.getElementById("charts");
    const query = names.map(n => "runs=" + encodeURIComponent(n)).join("&");
    poll(async () => { drawCharts(box, (await getJSON("/api/compare?" + query)).charts); }, 2000);
  }

  function newPage() {
    for (const select of document.querySelectorAll("select.reload")) {
      select.addEventListener("change", () => {
        const form = document.getElementById("new-run");
        const values = new URLSearchParams();
        for (const el of form.elements) {
          if (el.name && el.type !== "file" && el.value !== "") values.append(el.name, el.value);
        }
        location.href = "/new?" + values.toString();
      });
    }
  }

  function chatPage(name) {
    const path = name.split("/").map(encodeURIComponent).join("/");
    const transcript = document.getElementById("transcript");
    const messages = [];
    function bubble(role, content) {
      const div = document.createElement("div");
      div.className = "msg " + role;
      div.textContent = content;
      transcript.appendChild(div);
      return div;
    }
    document.getElementById("clear").addEventListener("click", () => { messages.length = 0; transcript.innerHTML = ""; });
    document.getElementById("chat-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = document.getElementById("message");
      if (!input.value.trim()) return;
      messages.push({role: "user", content: input.value});
      bubble("user", input.value);
      input.value = "";
      const answer = bubble("assistant", "");
      answer.classList.add("streaming");
      const r = await fetch("/api/chat/" + path, {
        method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({messages, max_tokens: +document.getElementById("max_tokens").value,
                              temperature: +document.getElementById("temperature").value,
                              base: document.getElementById("base").checked}),
      });
      if (!r.ok) {
        const body = await r.json();
        answer.textContent = "error: " + ((body.error && body.error.message) || r.status);
        answer.classList.remove("streaming");
        return;
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "", content = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, cut).replace(/^data: /, "");
          buffer = buffer.slice(cut + 2);
          if (line === "[DONE]") continue;
          const chunk = JSON.parse(line);
          if (chunk.error) { content += " [error: " + chunk.error.message + "]"; continue; }
          for (const choice of chunk.choices || []) content += (choice.delta && choice.delta.content) || "";
          if (chunk.usage) answer.dataset.tokens = chunk.usage.completion_tokens;
          answer.textContent = content;
        }
      }
      answer.classList.remove("streaming");
      answer.classList.add("done");
      messages.push({role: "assistant", content});
    });
  }

  return {runsPage, runPage, comparePage, newPage, chatPage, drawCharts};
})();

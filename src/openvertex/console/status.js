// The live status view: polls the server's status (built on what /metrics counts) while shown.

import { call, keys } from "./api.js";
import { lineChart } from "./charts.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function row(values) {
  const tr = document.createElement("tr");
  tr.append(...values.map(cell));
  return tr;
}

function bytes(count) {
  if (count >= 1 << 30) return `${(count / (1 << 30)).toFixed(1)} GiB`;
  if (count >= 1 << 20) return `${(count / (1 << 20)).toFixed(1)} MiB`;
  if (count >= 1 << 10) return `${(count / (1 << 10)).toFixed(1)} KiB`;
  return `${count} B`;
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export class Status {
  constructor({ notice }) {
    this.notice = notice;
    this.timer = null;
    this.polling = null; // the current round of polls: one stopped while its reading is under way ends there
  }

  start() {
    if (this.polling) return;
    const polling = (this.polling = {});
    const tick = async () => {
      await this.refresh();
      if (this.polling === polling) this.timer = setTimeout(tick, POLL_MS);
    };
    this.timer = setTimeout(tick, 0);
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.polling = null;
  }

  async refresh() {
    let status;
    try {
      // The server-wide view: an admin key opens it always, an API key while the server has one tenant.
      status = await call("GET", "/console/api/status", { key: keys.admin() || keys.api() });
    } catch (error) {
      $("status-updated").textContent = `No reading: ${error.message}`;
      return;
    }
    this.show(status);
  }

  show(status) {
    $("status-updated").textContent = `Updated ${new Date(status.time * 1000).toLocaleTimeString()} · up ${Math.round(status.uptime_s)} s`;
    $("backends").tBodies[0].replaceChildren(
      ...status.backends.map((b) =>
        row([
          `${b.name} (${b.kind})`,
          b.models.join(", "),
          b.ready ? "ready" : "not ready",
          `${b.slots_busy} / ${b.slots_total ?? "–"}`,
          String(b.queue),
          b.kv_capacity ? `${b.kv_tokens} / ${b.kv_capacity} tokens${kvMemory(b)}` : "–",
          b.tokens_per_second.toFixed(1),
          String(b.tokens_generated),
        ]),
      ),
    );
    const replicas = status.endpoints.flatMap((endpoint) =>
      (endpoint.replicas.length ? endpoint.replicas : [null]).map((replica) =>
        row([
          endpoint.id,
          replica ? replica.origin : "–",
          replica ? (replica.healthy ? "healthy" : "out of service") : "–",
          replica ? String(replica.in_flight) : "–",
          replica ? String(replica.failures) : "–",
          String(endpoint.requests),
          String(endpoint.errors),
        ]),
      ),
    );
    $("endpoints").tBodies[0].replaceChildren(...(replicas.length ? replicas : [row(["none configured", "", "", "", "", "", ""])]));
    const caches = status.context_caches;
    $("caches").textContent = `${caches.count} context cache${caches.count === 1 ? "" : "s"} · ${bytes(caches.bytes_memory)} in memory · ${bytes(caches.bytes_disk)} on disk`;
    const series = status.requests.series;
    const labels = series.map((point) => clock(point.t));
    const perSecond = (value) => value / status.requests.bucket_s;
    lineChart($("chart-requests"), {
      title: "Requests per second",
      labels,
      series: [
        { name: "all", values: series.map((p) => perSecond(p.requests)) },
        { name: "errors", values: series.map((p) => perSecond(p.client_errors + p.server_errors)) },
      ],
    });
    lineChart($("chart-latency"), {
      title: "Latency",
      unit: " ms",
      labels,
      series: [
        { name: "average", values: series.map((p) => p.latency_ms_avg) },
        { name: "max", values: series.map((p) => p.latency_ms_max) },
      ],
    });
    lineChart($("chart-tokens"), {
      title: "Tokens generated per second",
      labels,
      series: [{ name: "tokens/s", values: series.map((p) => perSecond(p.tokens)) }],
    });
  }
}

// The KV cache's memory in use, where the server knows it (cells that hold nothing cost none).
function kvMemory(backend) {
  const bytes = backend.kv_resident_bytes;
  return bytes === null || bytes === undefined ? "" : ` · ${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

// The admin view, opened with an admin key: issue keys (shown once), list and revoke them, and
// usage per key over time.

import { ApiError, call, keys } from "./api.js";
import { lineChart } from "./charts.js";

const $ = (id) => document.getElementById(id);

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function date(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "–";
}

export class Admin {
  constructor({ notice, enabled }) {
    this.notice = notice;
    this.enabled = enabled;
    $("admin-login").addEventListener("submit", (event) => {
      event.preventDefault();
      keys.setAdmin($("admin-key").value.trim());
      $("admin-key").value = "";
      this.show();
    });
    $("admin-logout").addEventListener("click", () => {
      keys.setAdmin("");
      this.show();
    });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.issue(event.target);
    });
    $("usage-hours").addEventListener("change", () => this.usage());
    $("new-key-copy").addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText($("new-key-value").textContent);
        $("new-key-copy").textContent = "Copied";
      } catch {
        $("new-key-copy").textContent = "Select it and press Ctrl+C";
      }
    });
  }

  async show() {
    $("admin-off").hidden = this.enabled;
    const open = this.enabled && Boolean(keys.admin());
    $("admin-login").hidden = !this.enabled || open;
    $("admin-panel").hidden = !open;
    if (!open) {
      if (this.enabled) $("admin-key").focus();
      return;
    }
    try {
      await Promise.all([this.list(), this.usage()]);
      this.notice("");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        keys.setAdmin("");
        this.notice("That admin key was refused.");
        this.show();
      } else {
        this.notice(error.message);
      }
    }
  }

  async list() {
    const { keys: rows } = await call("GET", "/admin/keys", { key: keys.admin() });
    $("keys").tBodies[0].replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        tr.dataset.key = row.name;
        tr.append(
          cell(row.name),
          cell(row.status),
          cell(row.models.length ? row.models.join(", ") : "all"),
          cell(row.requests_per_minute ?? "–"),
          cell(row.tokens_per_minute ?? "–"),
          cell(row.concurrent_requests ?? "–"),
          cell(date(row.create_time)),
        );
        const actions = document.createElement("td");
        if (row.status === "active") {
          const revoke = document.createElement("button");
          revoke.type = "button";
          revoke.className = "quiet danger";
          revoke.textContent = "Revoke";
          revoke.setAttribute("aria-label", `Revoke ${row.name}`);
          revoke.addEventListener("click", () => this.revoke(row.name));
          actions.append(revoke);
        }
        tr.append(actions);
        return tr;
      }),
    );
  }

  async issue(form) {
    const data = new FormData(form);
    const body = { name: String(data.get("name")).trim() };
    const models = String(data.get("models") || "")
      .split(",")
      .map((model) => model.trim())
      .filter(Boolean);
    if (models.length) body.models = models;
    for (const field of ["requests_per_minute", "tokens_per_minute", "concurrent_requests"]) {
      const value = String(data.get(field) || "");
      if (value) body[field] = Number(value);
    }
    const expires = String(data.get("expire_time") || "");
    if (expires) body.expire_time = new Date(expires).getTime() / 1000;
    try {
      const issued = await call("POST", "/admin/keys", { body, key: keys.admin() });
      $("new-key-name").textContent = issued.name;
      $("new-key-value").textContent = issued.key;
      $("new-key").hidden = false;
      form.reset();
      await this.list();
    } catch (error) {
      this.notice(error.message);
    }
  }

  async revoke(name) {
    if (!confirm(`Revoke the key ${name}? Requests with it fail from now on.`)) return;
    try {
      await call("DELETE", `/admin/keys/${encodeURIComponent(name)}`, { key: keys.admin() });
      $("new-key").hidden = true;
      await this.list();
    } catch (error) {
      this.notice(error.message);
    }
  }

  async usage() {
    const hours = $("usage-hours").value;
    const usage = await call("GET", `/admin/usage/series?hours=${hours}`, { key: keys.admin() });
    const step = usage.step_s;
    const now = Math.floor(Date.now() / 1000 / step) * step;
    const times = [];
    for (let t = Math.floor(usage.since / step) * step; t <= now; t += step) times.push(t);
    const labels = times.map((t) => new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }));
    const per = (field) =>
      usage.series.map((one) => {
        const at = new Map(one.points.map((point) => [point.t, point[field]]));
        return { name: one.key, values: times.map((t) => at.get(t) || 0) };
      });
    const tokens = usage.series.map((one) => {
      const at = new Map(one.points.map((point) => [point.t, point.prompt_tokens + point.output_tokens]));
      return { name: one.key, values: times.map((t) => at.get(t) || 0) };
    });
    lineChart($("chart-usage-requests"), { title: "Requests per key", labels, series: per("requests") });
    lineChart($("chart-usage-tokens"), { title: "Tokens per key", labels, series: tokens });
  }
}

// The console's start: what the server asks for (a key? an admin API?), the tabs, the theme.

import { ApiError, call, keys } from "./api.js";
import { Admin } from "./admin.js";
import { Playground } from "./playground.js";
import { Status } from "./status.js";

const $ = (id) => document.getElementById(id);
const THEME = "openvertex.theme";

function notice(message) {
  const box = $("notice");
  box.textContent = message;
  box.hidden = !message;
  clearTimeout(notice.timer);
  if (message) notice.timer = setTimeout(() => (box.hidden = true), 8000);
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

async function start() {
  applyTheme(localStorage.getItem(THEME));
  $("theme-button").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    const next = dark ? "light" : "dark";
    localStorage.setItem(THEME, next);
    applyTheme(next);
  });

  let config;
  try {
    config = await call("GET", "/console/api/config", { key: "" });
  } catch (error) {
    notice(`The server did not answer: ${error.message}`);
    return;
  }
  document.body.dataset.keys = config.keys_required ? "required" : "open";
  keys.open = !config.keys_required;

  const playground = new Playground({ notice, needKey: () => askKey("That key was refused; enter another.") });
  const status = new Status({ notice });
  const admin = new Admin({ notice, enabled: config.admin });

  async function loadModels() {
    try {
      await playground.load();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) askKey(keys.api() ? "That key was refused; enter another." : "");
      else notice(error.message);
    }
  }

  function askKey(message) {
    const dialog = $("key-dialog");
    $("key-error").textContent = message || "";
    if (!dialog.open) dialog.showModal();
    $("key-input").focus();
  }

  $("key-dialog-form").addEventListener("submit", () => {
    keys.setApi($("key-input").value.trim());
    $("key-input").value = "";
    loadModels();
  });
  $("key-dialog").addEventListener("cancel", (event) => {
    if (!keys.api()) event.preventDefault(); // nothing works without one
  });
  if (config.keys_required) {
    $("key-button").hidden = false;
    $("key-button").addEventListener("click", () => askKey(""));
  }

  function showTab() {
    const name = (location.hash || "#playground").slice(1);
    const tab = ["playground", "status", "admin"].includes(name) ? name : "playground";
    for (const section of document.querySelectorAll("[data-section]")) section.hidden = section.dataset.section !== tab;
    for (const link of document.querySelectorAll("[data-tab]")) {
      if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (tab === "status") status.start();
    else status.stop();
    if (tab === "admin") admin.show();
  }
  addEventListener("hashchange", showTab);
  showTab();

  if (config.keys_required && !keys.api()) askKey("");
  else await loadModels();
  document.body.dataset.ready = "true";
}

start();

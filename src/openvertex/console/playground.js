// The playground: a multi-turn chat with any routed model or self-deployed endpoint, on either
// surface, streamed; thoughts folded, function calls answered by hand, attachments, and every
// request shown as code.

import { ApiError, call, stream } from "./api.js";
import { curl, genaiPython, openaiPython } from "./code.js";
import * as conversation from "./conversation.js";

const MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024;
const $ = (id) => document.getElementById(id);

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function button(text, onClick, className = "quiet") {
  const element = node("button", className, text);
  element.type = "button";
  element.addEventListener("click", onClick);
  return element;
}

// A route's glob is offered as a model name it matches: a known one where it can (`google/gemini-*`
// offers google/gemini-2.5-flash), else with a name in place of its wildcard.
const KNOWN_MODELS = ["google/gemini-2.5-flash", "gemini-2.5-flash"];

function suggestion(pattern) {
  if (!pattern.includes("*")) return pattern;
  const escaped = pattern.split("*").map((piece) => piece.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  const glob = new RegExp(`^${escaped.join(".*")}$`);
  return KNOWN_MODELS.find((name) => glob.test(name)) || pattern.replace("*", "gemini-2.5-flash");
}

function nativeModel(model) {
  return model.replace(/^publishers\/google\/models\//, "").replace(/^google\//, "");
}

export class Playground {
  constructor({ notice, needKey }) {
    this.notice = notice;
    this.needKey = needKey;
    this.items = []; // {turn, failed?} | {error}
    this.attachments = [];
    this.controller = null;
    this.codeRequest = null;
    this.buildSafety();
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendPrompt();
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.sendPrompt();
      }
    });
    $("attach").addEventListener("change", (event) => this.attach(event.target.files));
    $("new-chat").addEventListener("click", () => this.reset());
    $("stop").addEventListener("click", () => this.controller && this.controller.abort());
    $("next-code").addEventListener("click", () => this.showNextCode());
    $("endpoint").addEventListener("change", () => this.surfaceRule());
    for (const input of document.querySelectorAll('input[name="code-kind"], input[name="code-where"]')) {
      input.addEventListener("change", () => this.renderCode());
    }
    $("code-close").addEventListener("click", () => $("code-dialog").close());
    $("code-copy").addEventListener("click", () => this.copy($("code-text").textContent, $("code-copy")));
  }

  buildSafety() {
    const box = $("safety");
    for (const category of conversation.SAFETY_CATEGORIES) {
      const label = node("label", null, category.replace("HARM_CATEGORY_", "").replace(/_/g, " ").toLowerCase() + " ");
      const select = node("select");
      select.dataset.category = category;
      select.append(new Option("default", ""));
      for (const threshold of conversation.SAFETY_THRESHOLDS) select.append(new Option(threshold, threshold));
      label.append(select);
      box.append(label);
    }
  }

  async load() {
    const listed = await call("GET", "/console/api/models");
    const list = $("model-list");
    list.replaceChildren();
    // Models that write: an embedding model answers no chat.
    const names = [...new Set(listed.models.filter((m) => m.writes !== false).map((m) => suggestion(m.id)))];
    for (const name of names) list.append(new Option(name, name));
    if (!$("model").value && names.length) $("model").value = names.find((n) => !n.includes("/")) || names[0];
    const select = $("endpoint");
    select.replaceChildren(new Option("none: the model above", ""));
    for (const endpoint of listed.endpoints) select.append(new Option(`endpoints/${endpoint.id}`, endpoint.id));
    this.surfaceRule();
  }

  // A self-deployed endpoint speaks chat completions only, as on Vertex.
  surfaceRule() {
    const pinned = Boolean($("endpoint").value);
    const native = document.querySelector('input[name="surface"][value="native"]');
    native.disabled = pinned;
    if (pinned) document.querySelector('input[name="surface"][value="openai"]').checked = true;
  }

  form() {
    const safety = {};
    for (const select of $("safety").querySelectorAll("select")) safety[select.dataset.category] = select.value;
    return {
      system: $("system").value,
      temperature: $("temperature").value,
      maxTokens: $("max-tokens").value,
      seed: $("seed").value,
      thinkingBudget: $("thinking-budget").value,
      includeThoughts: $("include-thoughts").checked,
      tools: $("tools").value,
      toolMode: $("tool-mode").value,
      schema: $("schema").value,
      safety,
      grounding: $("grounding").checked,
      stream: $("stream").checked,
    };
  }

  // What the next request is made of, fixed now so its code shows exactly what was sent.
  snapshot(contents) {
    const options = conversation.readOptions(this.form());
    const model = $("model").value.trim();
    if (!model) throw new Error("Model: pick or type one");
    const endpoint = $("endpoint").value;
    const surface = endpoint ? "openai" : document.querySelector('input[name="surface"]:checked').value;
    return {
      model,
      surface,
      target: endpoint ? { kind: "endpoint", id: endpoint } : { kind: "model", id: surface === "native" ? nativeModel(model) : model },
      project: $("project").value.trim() || "my-project",
      location: $("location").value.trim() || "us-central1",
      contents: structuredClone(contents),
      options,
    };
  }

  contents() {
    return this.items
      .filter((item) => item.turn && !item.failed)
      .map((item) => ({ role: item.turn.role, parts: item.turn.parts }));
  }

  reset() {
    if (this.controller) this.controller.abort();
    this.items = [];
    this.attachments = [];
    this.renderAttachments();
    this.render();
    $("prompt").focus();
  }

  async attach(files) {
    for (const file of files) {
      const mimeType = file.type || (file.name.toLowerCase().endsWith(".pdf") ? "application/pdf" : "");
      if (!mimeType) {
        this.notice(`${file.name}: its type is unknown; attach an image, audio or PDF file`);
        continue;
      }
      if (file.size > MAX_ATTACHMENT_BYTES) {
        this.notice(`${file.name}: larger than ${MAX_ATTACHMENT_BYTES / 1024 / 1024} MiB`);
        continue;
      }
      const url = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file);
      });
      this.attachments.push({ name: file.name, inlineData: { mimeType, data: String(url).split(",", 2)[1] || "" } });
    }
    $("attach").value = "";
    this.renderAttachments();
  }

  renderAttachments() {
    const list = $("attachments");
    list.replaceChildren(
      ...this.attachments.map((attachment, index) => {
        const item = node("li", "attachment", `${attachment.name} (${attachment.inlineData.mimeType}) `);
        item.append(
          button("Remove", () => {
            this.attachments.splice(index, 1);
            this.renderAttachments();
          }),
        );
        return item;
      }),
    );
  }

  sendPrompt() {
    if (this.controller) return;
    const text = $("prompt").value;
    if (!text.trim() && !this.attachments.length) return;
    const parts = this.attachments.map((attachment) => ({ inlineData: attachment.inlineData }));
    if (text.trim()) parts.push({ text });
    this.send({ role: "user", parts }, () => {
      $("prompt").value = "";
      this.attachments = [];
      this.renderAttachments();
    });
  }

  async send(userTurn, onSent) {
    let request;
    try {
      request = this.snapshot([...this.contents(), userTurn]);
    } catch (error) {
      this.notice(error.message);
      return;
    }
    onSent && onSent();
    const userItem = { turn: userTurn };
    this.items.push(userItem);
    const modelTurn = { role: "model", parts: [], request };
    const modelItem = { turn: modelTurn, pending: true };
    this.items.push(modelItem);
    this.render();
    this.controller = new AbortController();
    $("stop").hidden = false;
    $("send").disabled = true;
    try {
      await this.run(request, modelItem, this.controller.signal);
    } catch (error) {
      if (error.name === "AbortError") {
        modelTurn.finishReason = modelTurn.finishReason || "stopped";
      } else {
        userItem.failed = true;
        this.items.splice(this.items.indexOf(modelItem), 1);
        const status = error instanceof ApiError ? `${error.status} ${error.code}: ` : "";
        this.items.push({ error: status + error.message });
        if (error instanceof ApiError && error.status === 401) this.needKey();
      }
    } finally {
      if (this.items.includes(modelItem) && !modelTurn.parts.length) {
        // No answer (a blocked prompt, a stop before the first token): shown, never sent again, as
        // Gemini refuses a turn without parts and a blocked prompt would block each request after it.
        userItem.failed = modelItem.failed = true;
      }
      modelItem.pending = false;
      this.controller = null;
      $("stop").hidden = true;
      $("send").disabled = false;
      this.render();
    }
  }

  async run(request, item, signal) {
    const { options } = request;
    const path = conversation.paths(request.project, request.location, request.target, request.surface, options.stream);
    const turn = item.turn;
    let frame = 0;
    const redraw = () => {
      if (!frame) frame = requestAnimationFrame(() => ((frame = 0), this.render()));
    };
    if (request.surface === "native") {
      const body = conversation.nativeBody(request.contents, options);
      if (!options.stream) {
        conversation.addNativeChunk(turn, await call("POST", path, { body, signal }));
        return;
      }
      for await (const chunk of stream(path, body, { signal })) {
        conversation.addNativeChunk(turn, chunk);
        redraw();
      }
      return;
    }
    const body = conversation.openaiBody(request.model, request.contents, options);
    const state = conversation.openaiReader();
    const update = () => Object.assign(turn, conversation.openaiTurn(state), { request });
    try {
      if (!options.stream) {
        conversation.addOpenaiChunk(state, await call("POST", path, { body, signal }));
        return;
      }
      for await (const chunk of stream(path, body, { signal })) {
        conversation.addOpenaiChunk(state, chunk);
        update();
        redraw();
      }
    } finally {
      update();
    }
  }

  // ---- rendering ---------------------------------------------------------------------------

  render() {
    const list = $("messages");
    const items = this.items.map((item, index) => this.renderItem(item, index === this.items.length - 1));
    list.replaceChildren(...items);
    list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "nearest" });
  }

  renderItem(item, last) {
    if (item.error) {
      const li = node("li", "turn error");
      li.append(node("p", null, item.error));
      return li;
    }
    const { turn } = item;
    const li = node("li", `turn ${turn.role}${item.failed ? " failed" : ""}${item.pending ? " pending" : ""}`);
    const head = node("div", "turn-head");
    head.append(node("span", "role", turn.role === "model" ? "Model" : "You"));
    if (turn.request) {
      head.append(node("span", "muted", `${turn.request.surface === "native" ? "native" : "OpenAI"} · ${turn.request.target.kind === "endpoint" ? "endpoints/" + turn.request.target.id : turn.request.model}`));
      head.append(button("Code", () => this.showCode(turn.request), "quiet small"));
    }
    li.append(head);
    for (const part of turn.parts) li.append(this.renderPart(part));
    if (turn.role === "model") {
      const facts = [];
      if (turn.finishReason) facts.push(`finish: ${turn.finishReason}`);
      if (turn.usage) facts.push(`tokens: ${turn.usage.prompt} in, ${turn.usage.output} out${turn.usage.thoughts ? `, ${turn.usage.thoughts} thinking` : ""}`);
      if (facts.length) li.append(node("p", "facts muted", facts.join(" · ")));
      if (turn.sources && turn.sources.length) li.append(this.renderSources(turn.sources));
      const calls = turn.parts.filter((part) => part.functionCall);
      if (calls.length && last && !item.pending) li.append(this.answerForm(calls));
    }
    return li;
  }

  renderSources(sources) {
    const list = node("ol", "sources");
    list.setAttribute("aria-label", "Sources");
    for (const source of sources) {
      const item = node("li");
      if (/^https?:\/\//i.test(source.uri)) {
        const link = node("a", null, source.title);
        link.href = source.uri; // only web addresses become links
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        item.append(link);
      } else {
        item.textContent = `${source.title} (${source.uri})`;
      }
      list.append(item);
    }
    return list;
  }

  renderPart(part) {
    if (part.thought) {
      const details = node("details", "thought");
      details.append(node("summary", null, "Thoughts"), node("div", "text", part.text));
      return details;
    }
    if (typeof part.text === "string") {
      const text = node("div", "text", part.text);
      if (part.thoughtSignature) text.title = "carries a thought signature";
      return text;
    }
    if (part.functionCall) {
      const box = node("div", "call");
      box.append(node("span", "call-name", `call ${part.functionCall.name}`));
      if (part.thoughtSignature) box.append(node("span", "badge", "signed"));
      box.append(node("pre", null, JSON.stringify(part.functionCall.args, null, 2)));
      return box;
    }
    if (part.functionResponse) {
      const box = node("div", "call result");
      box.append(node("span", "call-name", `result of ${part.functionResponse.name}`));
      box.append(node("pre", null, JSON.stringify(part.functionResponse.response, null, 2)));
      return box;
    }
    if (part.inlineData) {
      const { mimeType, data } = part.inlineData;
      const url = `data:${mimeType};base64,${data}`;
      if (mimeType.startsWith("image/")) {
        const image = node("img", "attached");
        image.src = url;
        image.alt = "attached image";
        return image;
      }
      if (mimeType.startsWith("audio/")) {
        const audio = node("audio");
        audio.controls = true;
        audio.src = url;
        return audio;
      }
      return node("p", "badge", `${mimeType}, ${Math.round((data.length * 3) / 4 / 1024)} KiB`);
    }
    return node("pre", "muted", JSON.stringify(part));
  }

  // The calls of the last model turn, answered by hand: one result per call, sent together.
  answerForm(calls) {
    const form = node("form", "answer");
    form.append(node("p", null, "Answer the call" + (calls.length > 1 ? "s" : "") + " with a result (JSON):"));
    const fields = calls.map((part, index) => {
      const label = node("label", null, `${part.functionCall.name} result `);
      const area = node("textarea");
      area.rows = 3;
      area.spellcheck = false;
      area.value = '{"result": ""}';
      area.dataset.index = String(index);
      label.append(area);
      form.append(label);
      return area;
    });
    const submit = node("button", null, "Send result" + (calls.length > 1 ? "s" : ""));
    submit.type = "submit";
    form.append(submit);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const parts = [];
      for (const [index, part] of calls.entries()) {
        let value;
        try {
          value = JSON.parse(fields[index].value);
        } catch {
          value = fields[index].value; // plain text is a result too
        }
        const response = value && typeof value === "object" && !Array.isArray(value) ? value : { result: value };
        const answer = { name: part.functionCall.name, response };
        if (part.functionCall.id) answer.id = part.functionCall.id;
        parts.push({ functionResponse: answer });
      }
      this.send({ role: "user", parts });
    });
    return form;
  }

  // ---- code ------------------------------------------------------------------------------

  showNextCode() {
    const parts = this.attachments.map((attachment) => ({ inlineData: attachment.inlineData }));
    if ($("prompt").value.trim()) parts.push({ text: $("prompt").value });
    try {
      const contents = parts.length ? [...this.contents(), { role: "user", parts }] : this.contents();
      if (!contents.length) throw new Error("Write a message first: the code shows the request it would send");
      this.showCode(this.snapshot(contents));
    } catch (error) {
      this.notice(error.message);
    }
  }

  showCode(request) {
    this.codeRequest = request;
    this.renderCode();
    $("code-dialog").showModal();
  }

  renderCode() {
    const request = this.codeRequest;
    if (!request) return;
    const kind = document.querySelector('input[name="code-kind"]:checked').value;
    const where = document.querySelector('input[name="code-where"]:checked').value;
    const target = { where, origin: location.origin, project: request.project, location: request.location, hasKey: this.hasKey() };
    const { options } = request;
    const endpointId = request.target.kind === "endpoint" ? request.target.id : null;
    let text;
    if (kind === "curl") {
      const path = conversation.paths(request.project, request.location, request.target, request.surface, options.stream);
      const body =
        request.surface === "native"
          ? conversation.nativeBody(request.contents, options)
          : conversation.openaiBody(request.model, request.contents, options);
      text = curl(path, body, target);
    } else if (kind === "openai") {
      text = openaiPython(conversation.openaiBody(request.model, request.contents, options), target, endpointId);
    } else if (endpointId) {
      text = "# google-genai speaks the native API, which self-deployed endpoints do not: use curl or openai.\n";
    } else {
      text = genaiPython(nativeModel(request.model), conversation.nativeBody(request.contents, options), options.stream, target);
    }
    $("code-text").textContent = text;
  }

  hasKey() {
    return document.body.dataset.keys === "required";
  }

  async copy(text, control) {
    try {
      await navigator.clipboard.writeText(text);
      control.textContent = "Copied";
    } catch {
      // no clipboard (an insecure origin): select the text for the user to copy
      const range = document.createRange();
      range.selectNodeContents($("code-text"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      control.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => (control.textContent = "Copy"), 2000);
  }
}

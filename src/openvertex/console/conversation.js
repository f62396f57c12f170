// The conversation as the server sees it inside: Gemini `contents`. Either surface's request is
// built from it, and either surface's answer is read back into it, so a conversation can switch
// surface and every request can be copied as code for both.

export const THOUGHT_MARKER = "thought"; // thought_tag_marker on the OpenAI surface

export const SAFETY_CATEGORIES = [
  "HARM_CATEGORY_HARASSMENT",
  "HARM_CATEGORY_HATE_SPEECH",
  "HARM_CATEGORY_SEXUALLY_EXPLICIT",
  "HARM_CATEGORY_DANGEROUS_CONTENT",
];
export const SAFETY_THRESHOLDS = [
  "BLOCK_NONE",
  "BLOCK_ONLY_HIGH",
  "BLOCK_MEDIUM_AND_ABOVE",
  "BLOCK_LOW_AND_ABOVE",
  "OFF",
];

const AUDIO_FORMATS = { "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3" };

// What the form holds, checked: JSON fields parsed, numbers read. Throws Error naming the field.
export function readOptions(form) {
  const number = (name, value, integer) => {
    if (value === "" || value === undefined || value === null) return undefined;
    const parsed = Number(value);
    if (!Number.isFinite(parsed) || (integer && !Number.isInteger(parsed))) {
      throw new Error(`${name}: not a${integer ? "n integer" : " number"}`);
    }
    return parsed;
  };
  const json = (name, text, check) => {
    if (!text || !text.trim()) return undefined;
    let value;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw new Error(`${name}: not JSON (${error.message})`);
    }
    check(value);
    return value;
  };
  const tools = json("Tools", form.tools, (value) => {
    if (!Array.isArray(value) || value.some((d) => !d || typeof d.name !== "string")) {
      throw new Error("Tools: a JSON list of function declarations, each with a name");
    }
  });
  const schema = json("Response schema", form.schema, (value) => {
    if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("Response schema: a JSON object");
  });
  return {
    system: (form.system || "").trim(),
    temperature: number("Temperature", form.temperature, false),
    maxTokens: number("Max tokens", form.maxTokens, true),
    seed: number("Seed", form.seed, true),
    thinkingBudget: number("Thinking budget", form.thinkingBudget, true),
    includeThoughts: Boolean(form.includeThoughts),
    tools,
    toolMode: form.toolMode || "AUTO",
    schema,
    safety: Object.entries(form.safety || {}).filter(([, threshold]) => threshold),
    grounding: Boolean(form.grounding),
    stream: form.stream !== false,
  };
}

// ---- the native surface ----------------------------------------------------------------------

export function nativeBody(contents, options) {
  const body = { contents };
  if (options.system) body.systemInstruction = { parts: [{ text: options.system }] };
  const config = {};
  if (options.temperature !== undefined) config.temperature = options.temperature;
  if (options.maxTokens !== undefined) config.maxOutputTokens = options.maxTokens;
  if (options.seed !== undefined) config.seed = options.seed;
  if (options.thinkingBudget !== undefined || options.includeThoughts) {
    config.thinkingConfig = {};
    if (options.thinkingBudget !== undefined) config.thinkingConfig.thinkingBudget = options.thinkingBudget;
    if (options.includeThoughts) config.thinkingConfig.includeThoughts = true;
  }
  if (options.schema) {
    config.responseMimeType = "application/json";
    config.responseJsonSchema = options.schema;
  }
  if (Object.keys(config).length) body.generationConfig = config;
  if (options.safety.length) {
    body.safetySettings = options.safety.map(([category, threshold]) => ({ category, threshold }));
  }
  const tools = [];
  if (options.tools && options.tools.length) tools.push({ functionDeclarations: options.tools });
  if (options.grounding) tools.push({ googleSearch: {} });
  if (tools.length) body.tools = tools;
  if (options.tools && options.tools.length && options.toolMode !== "AUTO") {
    body.toolConfig = { functionCallingConfig: { mode: options.toolMode } };
  }
  return body;
}

// One streamed (or whole) GenerateContentResponse added to the model turn being built.
export function addNativeChunk(turn, chunk) {
  const candidate = (chunk.candidates || [])[0];
  if (candidate) {
    for (const part of (candidate.content && candidate.content.parts) || []) addPart(turn, { ...part });
    if (candidate.finishReason) turn.finishReason = candidate.finishReason;
    if (candidate.groundingMetadata) turn.sources = nativeSources(candidate.groundingMetadata);
  }
  if (chunk.promptFeedback && chunk.promptFeedback.blockReason) turn.finishReason = chunk.promptFeedback.blockReason;
  if (chunk.usageMetadata) {
    const usage = chunk.usageMetadata;
    turn.usage = { prompt: usage.promptTokenCount || 0, output: usage.candidatesTokenCount || 0, thoughts: usage.thoughtsTokenCount || 0 };
  }
}

// Text parts of one kind (thought or not) are joined as they stream in; anything else is its own part.
function addPart(turn, part) {
  const last = turn.parts[turn.parts.length - 1];
  const isText = typeof part.text === "string" && !part.functionCall;
  if (isText && last && typeof last.text === "string" && Boolean(last.thought) === Boolean(part.thought) && !last.thoughtSignature) {
    last.text += part.text;
    if (part.thoughtSignature) last.thoughtSignature = part.thoughtSignature;
    return;
  }
  if (isText && part.text === "" && part.thoughtSignature && last && typeof last.text === "string" && !last.thoughtSignature) {
    last.thoughtSignature = part.thoughtSignature; // a signature-only chunk closes the text before it
    return;
  }
  turn.parts.push(part);
}

// ---- the OpenAI surface ----------------------------------------------------------------------

function dataUrl(inline) {
  return `data:${inline.mimeType};base64,${inline.data}`;
}

function userMessages(turn) {
  const messages = [];
  const content = [];
  for (const part of turn.parts) {
    if (part.functionResponse) {
      const { id, name, response } = part.functionResponse;
      messages.push({ role: "tool", tool_call_id: id || name, name, content: JSON.stringify(response) });
    } else if (typeof part.text === "string") {
      content.push({ type: "text", text: part.text });
    } else if (part.inlineData) {
      const format = AUDIO_FORMATS[part.inlineData.mimeType];
      if (format) content.push({ type: "input_audio", input_audio: { data: part.inlineData.data, format } });
      else content.push({ type: "image_url", image_url: { url: dataUrl(part.inlineData) } });
    }
  }
  if (content.length) {
    const only = content.length === 1 && content[0].type === "text";
    messages.push({ role: "user", content: only ? content[0].text : content });
  }
  return messages;
}

// `tagged`: the request sets thought_tag_marker, so the server reads the tagged thoughts back as
// thoughts; without it they would reach the model as text it had said, and are left out.
function modelMessage(turn, tagged) {
  const thoughts = [];
  const texts = [];
  const calls = [];
  let signature;
  for (const part of turn.parts) {
    if (part.functionCall) {
      const call = {
        id: part.functionCall.id || `function-call-${calls.length}`,
        type: "function",
        function: { name: part.functionCall.name, arguments: JSON.stringify(part.functionCall.args || {}) },
      };
      if (part.thoughtSignature) call.extra_content = { google: { thought_signature: part.thoughtSignature } };
      calls.push(call);
    } else if (typeof part.text === "string") {
      (part.thought ? thoughts : texts).push(part.text);
      if (part.thoughtSignature && !part.thought) signature = part.thoughtSignature;
    }
  }
  let content = texts.join("");
  if (thoughts.length && tagged) content = `<${THOUGHT_MARKER}>${thoughts.join("")}</${THOUGHT_MARKER}>\n\n${content}`;
  const message = { role: "assistant", content: content || null };
  if (calls.length) message.tool_calls = calls;
  if (signature) message.extra_content = { google: { thought_signature: signature } };
  return message;
}

export function openaiBody(model, contents, options) {
  const messages = [];
  if (options.system) messages.push({ role: "system", content: options.system });
  for (const turn of contents) {
    if (turn.role === "model") messages.push(modelMessage(turn, options.includeThoughts));
    else messages.push(...userMessages(turn));
  }
  const body = { model, messages };
  if (options.stream) body.stream = true;
  if (options.temperature !== undefined) body.temperature = options.temperature;
  if (options.maxTokens !== undefined) body.max_tokens = options.maxTokens;
  if (options.seed !== undefined) body.seed = options.seed;
  if (options.schema) body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: options.schema } };
  if (options.tools && options.tools.length) {
    body.tools = options.tools.map((declaration) => ({ type: "function", function: declaration }));
    const choice = { AUTO: "auto", ANY: "required", NONE: "none" }[options.toolMode];
    if (choice !== "auto") body.tool_choice = choice;
  }
  if (options.grounding) body.web_search_options = {};
  const google = {};
  if (options.thinkingBudget !== undefined || options.includeThoughts) {
    google.thinking_config = {};
    if (options.thinkingBudget !== undefined) google.thinking_config.thinking_budget = options.thinkingBudget;
    if (options.includeThoughts) {
      google.thinking_config.include_thoughts = true;
      google.thought_tag_marker = THOUGHT_MARKER;
    }
  }
  if (options.safety.length) google.safety_settings = options.safety.map(([category, threshold]) => ({ category, threshold }));
  if (Object.keys(google).length) body.extra_body = { google };
  return body;
}

// The OpenAI answer read back into Gemini parts. `state` carries what one stream has said so far.
export function openaiReader() {
  return { content: "", thoughts: "", calls: [], media: [], sources: [], signature: undefined, finishReason: undefined, usage: undefined };
}

function googleOf(holder) {
  return (holder && holder.extra_content && holder.extra_content.google) || {};
}

export function addOpenaiChunk(state, chunk) {
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || choice.message || {};
    const google = googleOf(delta);
    if (typeof delta.content === "string") {
      if (google.thought) state.thoughts += delta.content;
      else state.content += delta.content;
    }
    if (google.thought_signature) state.signature = google.thought_signature;
    // Image (and audio) output comes in `audio`, its type in extra_content, as Vertex sends it.
    if (delta.audio && delta.audio.data) {
      state.media.push({ inlineData: { mimeType: googleOf(delta.audio).mime_type || "audio/wav", data: delta.audio.data } });
    }
    for (const annotation of delta.annotations || []) {
      const citation = annotation.url_citation;
      if (citation && citation.url) state.sources.push({ uri: citation.url, title: citation.title || citation.url });
    }
    for (const [position, call] of (delta.tool_calls || []).entries()) {
      const index = call.index ?? position;
      const known = state.calls[index] || (state.calls[index] = { id: call.id, name: "", arguments: "", signature: undefined });
      if (call.id) known.id = call.id;
      if (call.function && call.function.name) known.name = call.function.name;
      if (call.function && typeof call.function.arguments === "string") {
        // Whole calls arrive once; streamed arguments arrive as fragments of the same call.
        known.arguments = choice.message ? call.function.arguments : known.arguments + call.function.arguments;
      }
      const signature = googleOf(call).thought_signature;
      if (signature) known.signature = signature;
    }
    if (choice.finish_reason) state.finishReason = choice.finish_reason;
  }
  if (chunk.usage) {
    const usage = chunk.usage;
    const details = usage.completion_tokens_details || {};
    state.usage = { prompt: usage.prompt_tokens || 0, output: usage.completion_tokens || 0, thoughts: details.reasoning_tokens || 0 };
  }
}

const TAGGED = new RegExp(`^\\s*<${THOUGHT_MARKER}>([\\s\\S]*?)(?:</${THOUGHT_MARKER}>\\n*|$)`);

export function openaiTurn(state) {
  let thoughts = state.thoughts;
  let text = state.content;
  const tagged = TAGGED.exec(text);
  if (tagged) {
    thoughts += tagged[1];
    text = text.slice(tagged[0].length);
  }
  thoughts = thoughts.replace(new RegExp(`</?${THOUGHT_MARKER}>\\n*`, "g"), "");
  text = text.replace(new RegExp(`^</${THOUGHT_MARKER}>\\n*`), "");
  const parts = [];
  if (thoughts) parts.push({ text: thoughts, thought: true });
  if (text) parts.push(state.signature && !state.calls.length ? { text, thoughtSignature: state.signature } : { text });
  parts.push(...state.media);
  for (const call of state.calls.filter(Boolean)) {
    let args;
    try {
      args = call.arguments ? JSON.parse(call.arguments) : {};
    } catch {
      args = { _unparsed: call.arguments };
    }
    const part = { functionCall: { id: call.id, name: call.name, args } };
    if (call.signature) part.thoughtSignature = call.signature;
    parts.push(part);
  }
  return { role: "model", parts, finishReason: state.finishReason, usage: state.usage, sources: state.sources };
}

// Where a grounded answer came from, on either surface: [{uri, title}].
export function nativeSources(metadata) {
  return ((metadata && metadata.groundingChunks) || [])
    .map((chunk) => chunk.web || chunk.retrievedContext)
    .filter((source) => source && source.uri)
    .map((source) => ({ uri: source.uri, title: source.title || source.uri }));
}

// ---- paths -----------------------------------------------------------------------------------

export function paths(project, location, target, surface, stream) {
  const base = `/v1beta1/projects/${encodeURIComponent(project)}/locations/${encodeURIComponent(location)}`;
  if (target.kind === "endpoint") return `${base}/endpoints/${encodeURIComponent(target.id)}/chat/completions`;
  if (surface === "openai") return `${base}/endpoints/openapi/chat/completions`;
  const method = stream ? "streamGenerateContent?alt=sse" : "generateContent";
  // `meta/llama-3` is publishers/meta/models/llama-3, as the server routes it back; a bare id is Google's.
  const slash = target.id.indexOf("/");
  const [publisher, model] = slash > 0 ? [target.id.slice(0, slash), target.id.slice(slash + 1)] : ["google", target.id];
  return `${base}/publishers/${encodeURIComponent(publisher)}/models/${encodeURIComponent(model)}:${method}`;
}

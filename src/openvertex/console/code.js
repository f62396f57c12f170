// A playground request as code a user can paste: curl, Python `openai`, Python `google-genai`,
// pointed at this server or at real Vertex AI. The bodies are the ones the playground sends.

const OPENAI_KWARGS = new Set([
  "model", "messages", "stream", "temperature", "max_tokens", "max_completion_tokens", "seed", "response_format",
  "tools", "tool_choice", "web_search_options", "top_p", "stop", "n", "reasoning_effort",
]);

// A JSON value as a Python literal.
export function python(value, indent = 0) {
  const pad = " ".repeat(indent + 4);
  const end = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => pad + python(item, indent + 4)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([key, item]) => `${pad}${JSON.stringify(key)}: ${python(item, indent + 4)}`).join(",\n")},\n${end}}`;
}

function vertexHost(location) {
  return location === "global" ? "https://aiplatform.googleapis.com" : `https://${location}-aiplatform.googleapis.com`;
}

function vertexPath(target) {
  return `/v1beta1/projects/${encodeURIComponent(target.project)}/locations/${encodeURIComponent(target.location)}`;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

// target: {where: "here" | "vertex", origin, project, location, hasKey}
export function curl(path, body, target) {
  const url = target.where === "here" ? target.origin + path : vertexHost(target.location) + path;
  const auth =
    target.where === "here"
      ? target.hasKey
        ? ' -H "Authorization: Bearer $OPENVERTEX_API_KEY"'
        : ' -H "Authorization: Bearer any-token"'
      : ' -H "Authorization: Bearer $(gcloud auth print-access-token)"';
  const streaming = body.stream || path.includes("alt=sse") ? " -N" : "";
  return (
    `curl -sS${streaming} -X POST${auth} -H "Content-Type: application/json" \\\n  ${shellQuote(url)} \\\n` +
    `  --data-binary @- <<'JSON'\n${JSON.stringify(body, null, 2)}\nJSON\n`
  );
}

export function openaiPython(body, target, endpointId) {
  const segment = endpointId ? `endpoints/${encodeURIComponent(endpointId)}` : "endpoints/openapi";
  const kwargs = {};
  const extra = {};
  for (const [key, value] of Object.entries(body)) (OPENAI_KWARGS.has(key) ? kwargs : extra)[key] = value;
  let client;
  if (target.where === "here") {
    const key = target.hasKey ? 'os.environ["OPENVERTEX_API_KEY"]' : '"any-token"';
    client =
      "import os\n\nimport openai\n\n" +
      `client = openai.OpenAI(\n    base_url=${JSON.stringify(`${target.origin}${vertexPath(target)}/${segment}`)},\n` +
      `    api_key=${key},\n)\n`;
  } else {
    client =
      "import google.auth\nimport google.auth.transport.requests\nimport openai\n\n" +
      'credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])\n' +
      "credentials.refresh(google.auth.transport.requests.Request())\n" +
      `client = openai.OpenAI(\n    base_url=${JSON.stringify(`${vertexHost(target.location)}${vertexPath(target)}/${segment}`)},\n` +
      "    api_key=credentials.token,\n)\n";
  }
  const args = Object.entries(kwargs).map(([key, value]) => `    ${key}=${python(value, 4)},`);
  if (Object.keys(extra).length) args.push(`    extra_body=${python(extra, 4)},`);
  const create = `client.chat.completions.create(\n${args.join("\n")}\n)`;
  const use = body.stream
    ? `for chunk in ${create}:\n    if chunk.choices and chunk.choices[0].delta.content:\n        print(chunk.choices[0].delta.content, end="", flush=True)\nprint()\n`
    : `completion = ${create}\nprint(completion.choices[0].message.content)\n`;
  return `${client}\n${use}`;
}

const CONFIG_KEYS = {
  systemInstruction: "system_instruction",
  safetySettings: "safety_settings",
  tools: "tools",
  toolConfig: "tool_config",
  cachedContent: "cached_content",
};

function snake(name) {
  return name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}

// The native body as google-genai's `generate_content(model, contents, config)`: the generation
// config's fields and the request's other fields meet in one config (nested objects keep the
// wire's camelCase, which the SDK's types accept as well).
export function genaiPython(model, body, stream, target) {
  const config = {};
  for (const [key, value] of Object.entries(body.generationConfig || {})) config[snake(key)] = value;
  for (const [key, name] of Object.entries(CONFIG_KEYS)) if (body[key] !== undefined) config[name] = body[key];
  let client;
  if (target.where === "here") {
    const token = target.hasKey ? 'os.environ["OPENVERTEX_API_KEY"]' : '"any-token"';
    client =
      "import os\n\nimport google.oauth2.credentials\nfrom google import genai\nfrom google.genai import types\n\n" +
      `client = genai.Client(\n    vertexai=True,\n    project=${JSON.stringify(target.project)},\n    location=${JSON.stringify(target.location)},\n` +
      `    credentials=google.oauth2.credentials.Credentials(token=${token}),\n` +
      `    http_options=types.HttpOptions(base_url=${JSON.stringify(target.origin)}, api_version="v1beta1"),\n)\n`;
  } else {
    client =
      "from google import genai\n\n" +
      `client = genai.Client(vertexai=True, project=${JSON.stringify(target.project)}, location=${JSON.stringify(target.location)})\n`;
  }
  const args = [`    model=${JSON.stringify(model)},`, `    contents=${python(body.contents, 4)},`];
  if (Object.keys(config).length) args.push(`    config=${python(config, 4)},`);
  const call = `(\n${args.join("\n")}\n)`;
  const use = stream
    ? `for chunk in client.models.generate_content_stream${call}:\n    print(chunk.text or "", end="", flush=True)\nprint()\n`
    : `response = client.models.generate_content${call}\nprint(response.text)\n`;
  return `${client}\n${use}`;
}

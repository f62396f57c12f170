// Talking to this server: the key kept in the browser session, JSON calls, SSE streams, and
// Google's error shape read back into one message.

const API_KEY = "openvertex.apiKey";
const ADMIN_KEY = "openvertex.adminKey";

// An open server (no keys configured) still wants a token on each API request, any token.
export const OPEN_SERVER_TOKEN = "any-token";

export const keys = {
  open: false, // set once the server says it has no keys
  api: () => sessionStorage.getItem(API_KEY) || (keys.open ? OPEN_SERVER_TOKEN : ""),
  admin: () => sessionStorage.getItem(ADMIN_KEY) || "",
  setApi: (value) => (value ? sessionStorage.setItem(API_KEY, value) : sessionStorage.removeItem(API_KEY)),
  setAdmin: (value) => (value ? sessionStorage.setItem(ADMIN_KEY, value) : sessionStorage.removeItem(ADMIN_KEY)),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // HTTP status
    this.code = code; // Google's status name, e.g. INVALID_ARGUMENT
  }
}

// Google's error shape: `{"error": {…}}` on the native routes, `[{"error": {…}}]` on the OpenAI ones.
export function errorOf(status, body) {
  let error = Array.isArray(body) ? body[0] && body[0].error : body && body.error;
  if (!error || typeof error !== "object") error = { message: typeof body === "string" ? body : "", status: "" };
  const message = error.message || `HTTP ${status}`;
  return new ApiError(status, error.status || "", message);
}

function headers(key, extra) {
  const out = { ...extra };
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(response) {
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text is the message
  }
  return errorOf(response.status, body);
}

export async function call(method, path, { body, key = keys.api(), signal } = {}) {
  const init = { method, headers: headers(key, body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return text ? JSON.parse(text) : {};
}

// POST a body and yield each SSE event's parsed data (`data: [DONE]` ends the stream). An error
// the server sends inside the stream (its status already 200) arrives as data with an `error`.
export async function* stream(path, body, { key = keys.api(), signal } = {}) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers(key, { "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let carriage = ""; // a CR that ends a read may be half of a CRLF split across two reads
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const text = carriage + (done ? "" : value);
      carriage = !done && text.endsWith("\r") ? "\r" : "";
      // SSE lines end in CRLF, LF or CR (the native surface and sse-starlette write CRLF).
      pending += (carriage ? text.slice(0, -1) : text).replace(/\r\n?/g, "\n");
      let end;
      while ((end = pending.indexOf("\n\n")) >= 0) {
        const frame = pending.slice(0, end);
        pending = pending.slice(end + 2);
        const data = frame
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        const error = Array.isArray(event) ? event[0] && event[0].error : event.error;
        if (error) throw errorOf(error.code || 500, event);
        yield event;
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {}); // a stream left early (an error, [DONE]) is not read on
  }
}

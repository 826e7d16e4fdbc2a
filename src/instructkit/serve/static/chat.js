"use strict";
// The chat page: a conversation with the served model, each answer streamed token by token
// from this server's /v1/chat/completions (server-sent events: `data: {json}` blocks, then
// `data: [DONE]`). The whole conversation is sent each turn, as OpenAI clients do.

const $ = (id) => document.getElementById(id);
const log = $("log");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const statusLine = $("status");

let messages = []; // [{role, content}] of finished turns
let controller = null; // the AbortController of the answer being streamed

function setBusy(busy) {
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
  if (busy) stopButton.focus();
  else if (document.activeElement === stopButton || document.activeElement === document.body) {
    prompt.focus();
  }
}

function nearBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

function addMessage(role, text) {
  $("empty").hidden = true;
  const who = role === "user" ? "You" : Ik.info.model || "Model";
  const body = Ik.el("div", { class: "text" }, text);
  const meta = Ik.el("div", { class: "meta" });
  const article = Ik.el("article", { class: `msg ${role}` }, Ik.el("h2", { class: "who" }, who), body, meta);
  log.append(article);
  log.scrollTop = log.scrollHeight;
  return { article, body, meta };
}

/** Parses one server-sent event block; returns false at [DONE]. */
function handleEvent(block, answer, state) {
  for (const line of block.split("\n")) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (data === "[DONE]") return false;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
    if (chunk.usage) state.tokens = chunk.usage.completion_tokens;
    const choice = (chunk.choices || [])[0];
    if (!choice) continue;
    if (choice.delta && choice.delta.content) {
      const follow = nearBottom();
      state.text += choice.delta.content;
      answer.body.textContent = state.text;
      if (follow) log.scrollTop = log.scrollHeight;
    }
    if (choice.finish_reason) state.finish = choice.finish_reason;
  }
  return true;
}

function requestBody() {
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const temperature = $("temperature").value.trim();
  const maxTokens = $("max-tokens").value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  return body;
}

function finishNote(state, stopped) {
  const parts = [];
  if (state.tokens !== null) parts.push(`${state.tokens} token${state.tokens === 1 ? "" : "s"}`);
  if (stopped) parts.push("stopped");
  else if (state.finish === "length") parts.push("cut at the token limit");
  return parts.join(" · ");
}

async function send() {
  const text = prompt.value.trim();
  if (!text || controller) return;
  prompt.value = "";
  resizePrompt();
  messages.push({ role: "user", content: text });
  addMessage("user", text);
  const answer = addMessage("assistant", "");
  answer.article.setAttribute("aria-busy", "true");
  answer.article.classList.add("streaming");
  const state = { text: "", finish: null, tokens: null };
  controller = new AbortController();
  setBusy(true);
  statusLine.textContent = "Generating…";
  let stopped = false;
  try {
    const response = await Ik.fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await Ik.errorText(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let open = true;
    while (open) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while (open && (end = buffer.indexOf("\n\n")) >= 0) {
        open = handleEvent(buffer.slice(0, end), answer, state);
        buffer = buffer.slice(end + 2);
      }
    }
    statusLine.textContent = "";
  } catch (error) {
    if (error.name === "AbortError") {
      stopped = true;
      statusLine.textContent = "Stopped.";
    } else {
      showError(answer, state, error);
    }
  } finally {
    controller = null;
    answer.article.removeAttribute("aria-busy");
    answer.article.classList.remove("streaming");
    setBusy(false);
  }
  if (answer.article.classList.contains("error")) {
    messages.pop(); // a failed turn is not part of the conversation; its text can be resent
    return;
  }
  if (!state.text) answer.body.textContent = stopped ? "" : "(empty answer)";
  answer.meta.textContent = finishNote(state, stopped);
  messages.push({ role: "assistant", content: state.text });
}

function showError(answer, state, error) {
  const message = error instanceof TypeError ? `Could not reach the server: ${error.message}` : error.message;
  answer.article.classList.add("error");
  answer.article.setAttribute("role", "alert");
  if (state.text) answer.body.textContent = state.text;
  answer.meta.textContent = message;
  if (!state.text) answer.body.remove();
  statusLine.textContent = "The server answered with an error.";
}

function clearConversation() {
  if (controller) controller.abort();
  messages = [];
  for (const node of log.querySelectorAll(".msg")) node.remove();
  $("empty").hidden = false;
  statusLine.textContent = "Conversation cleared.";
  prompt.focus();
}

function resizePrompt() {
  prompt.style.height = "auto";
  prompt.style.height = `${Math.min(prompt.scrollHeight, window.innerHeight * 0.4)}px`;
}

function checkSettings() {
  for (const input of [$("temperature"), $("max-tokens")]) {
    if (!input.checkValidity()) {
      input.reportValidity();
      return false;
    }
  }
  return true;
}

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
prompt.addEventListener("input", resizePrompt);
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (checkSettings()) send();
});
stopButton.addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", clearConversation);

Ik.start().then((info) => {
  $("model-name").textContent = info.model || "";
  document.title = `${info.model} · instructkit`;
  $("run-link").hidden = !info.run;
  const maxTokens = $("max-tokens");
  maxTokens.max = info.context_length;
  maxTokens.value = Math.min(info.max_new_tokens, info.context_length);
  prompt.focus();
});

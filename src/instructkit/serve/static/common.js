"use strict";
// Shared by the chat and run pages: what the server says at /web/info, the API key (asked
// once, kept for this tab) and fetch with it. Every request goes to this same origin.

const KEY_STORE = "instructkit.apiKey";

const Ik = {
  info: null,

  /** Reads /web/info and, when the server wants a key we do not have yet, asks for it. */
  async start() {
    const response = await fetch("/web/info", { cache: "no-store" });
    Ik.info = await response.json();
    if (Ik.info.key_required && !sessionStorage.getItem(KEY_STORE)) {
      await Ik.askKey("This server needs its API key (the one given to --api-key).");
    }
    return Ik.info;
  },

  /** Shows the key dialog; resolves once a key has been entered. */
  askKey(message) {
    const dialog = document.getElementById("key-dialog");
    const input = document.getElementById("key-input");
    document.getElementById("key-message").textContent = message;
    input.value = "";
    return new Promise((resolve) => {
      const form = dialog.querySelector("form");
      form.onsubmit = (event) => {
        event.preventDefault();
        if (!input.value.trim()) return;
        sessionStorage.setItem(KEY_STORE, input.value.trim());
        dialog.close();
        resolve();
      };
      dialog.oncancel = (event) => event.preventDefault(); // nothing works without it
      dialog.showModal();
      input.focus();
    });
  },

  /** fetch() with the key; a rejected key asks again and retries. */
  async fetch(url, options = {}) {
    const headers = { ...(options.headers || {}) };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(url, { ...options, headers });
    if (response.status === 401 && Ik.info && Ik.info.key_required) {
      sessionStorage.removeItem(KEY_STORE);
      await Ik.askKey("The server did not accept that key. Try again.");
      return Ik.fetch(url, options);
    }
    return response;
  },

  /** The message of an error response in either API dialect, else its status line. */
  async errorText(response) {
    let detail = "";
    try {
      const body = await response.json();
      const error = body.error ?? body.detail ?? body;
      detail = typeof error === "string" ? error : error.message ?? JSON.stringify(error);
    } catch {
      detail = response.statusText;
    }
    return `Error ${response.status}: ${detail}`;
  },

  /** An element with attributes and children (strings become text, never HTML). */
  el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "class") node.className = value;
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  },
};

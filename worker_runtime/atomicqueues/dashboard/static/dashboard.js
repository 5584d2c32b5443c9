// The dashboard's one script (no build step): live updates of the page's #live part, the
// token kept for this tab (sessionStorage), and actions confirmed before they are sent.
// It never builds HTML from data: the server renders (and escapes) every fragment, and
// messages are set as text.
"use strict";

const TOKEN_KEY = "aq-dashboard-token";
let busy = false;

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function say(text, bad) {
  const flash = document.getElementById("flash");
  flash.textContent = text;
  flash.className = bad ? "bad" : "ok";
}

function showUnlocked() {
  document.body.classList.toggle(
    "unlocked", document.body.dataset.actions === "on" && token() !== "");
}

async function post(action, body, withToken) {
  const response = await fetch("/api/" + action, {
    method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + withToken},
    body: JSON.stringify(body),
  });
  let answer = {ok: false, message: response.statusText};
  try {
    answer = await response.json();
  } catch (e) { /* not JSON: keep the status text */ }
  return {status: response.status, ok: response.ok && answer.ok, message: answer.message};
}

async function refresh() {
  if (busy || document.hidden) return;
  busy = true;
  try {
    const response = await fetch(location.href, {headers: {"X-AQ-Partial": "1"}});
    const text = await response.text();
    if (response.ok) {
      document.getElementById("live").innerHTML = text;
      document.getElementById("updated").textContent =
        "updated " + new Date().toLocaleTimeString();
    } else {
      document.getElementById("updated").textContent =
        "live update failed: " + response.status + " " + response.statusText;
    }
  } catch (e) {
    document.getElementById("updated").textContent = "live update failed: " + e;
  } finally {
    busy = false;
  }
}

async function act(button) {
  const data = button.dataset;
  if (!window.confirm(data.confirm)) return;
  const body = {};
  for (const key of ["type", "entity", "job", "name"]) {
    if (data[key] !== undefined) body[key] = data[key];
  }
  busy = true;
  try {
    const answer = await post(data.action, body, token());
    say(answer.message, !answer.ok);
  } catch (e) {
    say("the action failed: " + e, true);
  } finally {
    busy = false;
  }
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  showUnlocked();
  const unlock = document.getElementById("unlock");
  if (unlock) {
    unlock.addEventListener("submit", async (event) => {
      event.preventDefault();
      const given = document.getElementById("token").value;
      const answer = await post("check", {}, given);
      if (answer.ok) {
        sessionStorage.setItem(TOKEN_KEY, given);
        document.getElementById("token").value = "";
      }
      say(answer.message, !answer.ok);
      showUnlocked();
    });
    document.getElementById("lock").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      say("actions locked", false);
      showUnlocked();
    });
  }
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.act");
    if (button) act(button);
  });
  const every = Number(document.body.dataset.refresh);
  if (every > 0) setInterval(refresh, every);
});

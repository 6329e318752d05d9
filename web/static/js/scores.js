// Scores where people look: compact chips of the latest value per name (trace header, traces list,
// sessions), and the feedback box of the trace view (thumbs up/down and a comment) that posts a score to
// POST /api/traces/{id}/scores. Writes are off unless the server enables them: its 403 message is shown
// as it is; when a token is needed the user pastes it once and it is kept in sessionStorage.

import { post, setWriteToken, writeToken } from "./api.js";
import { h } from "./dom.js";

function number(value) {
  return Number(value.toPrecision(4)).toString();
}

/** "name value (label)" or "name label". */
export function scoreText(score) {
  const value = score.value === null ? "" : number(score.value);
  const shown = value && score.label ? `${value} (${score.label})` : value || score.label;
  return `${score.name} ${shown}`;
}

function tone(score) {
  const label = (score.label || "").toLowerCase();
  if (/down|bad|wrong|incorrect|fail|hallucinat/.test(label)) return "bad";
  if (/up|good|correct|pass/.test(label)) return "good";
  if (score.value !== null && score.value >= 0 && score.value <= 1) return score.value >= 0.5 ? "good" : "bad";
  return "neutral";
}

/** One chip per name: the latest value, with who gave it, when and any comment in its title. */
export function scoreChips(scores) {
  if (!scores || !scores.length) return null;
  return h("span.score-chips", scores.map((s) => h(`span.score-chip.tone-${tone(s)}`, {
    dataset: { scoreName: s.name },
    title: [`${s.count} score(s); the latest from ${s.source}${s.author ? ` (${s.author})` : ""}`
      + ` at ${s.created_at}`, s.comment].filter(Boolean).join("\n"),
  }, scoreText(s))));
}

/** Thumbs up/down and a comment box; `onSaved` runs after the server (Kafka) holds the score. */
export function feedbackBox(traceId, onSaved) {
  const status = h("span.feedback-status", { role: "status" });
  const comment = h("input", { type: "text", name: "comment", maxlength: 8192,
    placeholder: "comment (optional): what was wrong, the right answer…" });
  const token = h("input", { type: "password", name: "write_token", placeholder: "write token",
    autocomplete: "off" });
  const tokenRow = h("div.token-row", { hidden: true },
    h("span.muted", "This server needs a write token: "), token,
    h("button.secondary.small", { type: "button", onclick: () => {
      setWriteToken(token.value.trim());
      tokenRow.hidden = true;
      status.textContent = "Token kept for this tab; send again.";
    } }, "Use token"));
  const send = async (value, label, button) => {
    for (const b of box.querySelectorAll("button.thumb")) b.disabled = true;
    status.className = "feedback-status";
    status.textContent = "Sending…";
    try {
      await post(`traces/${encodeURIComponent(traceId)}/scores`, {
        name: "user_feedback", value, label, comment: comment.value.trim(),
      });
      status.textContent = `Saved: ${label}.`;
      button.classList.add("chosen");
      comment.value = "";
      if (onSaved) onSaved();
    } catch (err) {
      status.classList.add("err-text");
      status.textContent = err.message;
      if (err.code === "write_token_required") {
        if (writeToken()) setWriteToken("");
        tokenRow.hidden = false;
      }
    } finally {
      for (const b of box.querySelectorAll("button.thumb")) b.disabled = false;
    }
  };
  const thumb = (value, label, text, title) => h("button.secondary.small.thumb",
    { type: "button", title, dataset: { label }, onclick: (e) => send(value, label, e.currentTarget) }, text);
  const box = h("div.feedback", h("span.stat-label", "Feedback"),
    thumb(1, "thumbs_up", "✓ Good", "score this trace user_feedback = 1 (thumbs_up)"),
    thumb(0, "thumbs_down", "✗ Bad", "score this trace user_feedback = 0 (thumbs_down)"),
    comment, status, tokenRow);
  return box;
}

// Replies as Markdown, made safe: marked (vendor/) turns the text into HTML, raw HTML in the reply is shown as the
// text it is (never parsed), images become links (a remote image would load, and report, without a click), and
// DOMPurify (vendor/) sanitises the result again, so nothing the model writes can run script, style the page or
// submit anything. Links open in a new tab without a referrer; only http(s) and mailto links stay links. Code blocks
// are highlighted by highlight.js (vendor/) when their language is named, else shown monospaced as they are.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import hljs from "./vendor/highlight.min.js";

const SAFE_URL = /^(?:https?:|mailto:)/i;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text, block }) {
      return block ? `<p class="raw-html">${escapeHtml(text.replace(/\n+$/, ""))}</p>` : escapeHtml(text);
    },
    image({ href, text }) {
      const label = escapeHtml(text || href || "image");
      return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">[image: ${label}]</a>` : `[image: ${label}]`;
    },
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      if (language && hljs.getLanguage(language)) {
        const html = hljs.highlight(text, { language, ignoreIllegals: true }).value;
        return `<pre><code class="hljs language-${escapeHtml(language)}">${html}</code></pre>`;
      }
      return `<pre><code class="hljs">${escapeHtml(text)}</code></pre>`;
    },
  },
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select", "iframe", "video",
    "audio", "source", "picture", "link", "meta", "base"],
  FORBID_ATTR: ["style", "id", "name", "srcset", "action", "formaction"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName !== "A") return;
  const href = node.getAttribute("href") || "";
  if (!SAFE_URL.test(href)) {
    node.removeAttribute("href");
    return;
  }
  node.setAttribute("target", "_blank");
  node.setAttribute("rel", "noopener noreferrer nofollow");
  node.setAttribute("title", href);
});

// A DocumentFragment of the reply's text as Markdown, safe to insert.
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text || "", { async: false }), PURIFY);
}

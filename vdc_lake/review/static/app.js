// vdc-lake review: actions on the report's cards (keep / drop / clear, selection, undo), keyboard
// shortcuts, label mode and the threshold sliders. No build step; htmx does the partial reloads.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let focus = 0;
  let busy = false;

  function flash(text, isError) {
    const el = document.getElementById("flash");
    el.textContent = text;
    el.className = isError ? "error" : "ok";
  }

  function cards() {
    return Array.from(document.querySelectorAll("#main .cards figure.card[data-image-id]"));
  }

  function selected() {
    return cards().filter((c) => c.classList.contains("selected")).map((c) => c.dataset.imageId);
  }

  function showSelection() {
    const bar = document.getElementById("actionbar");
    bar.hidden = cards().length === 0;
    document.getElementById("selected-count").textContent = selected().length + " selected";
  }

  function setFocus(i) {
    const all = cards();
    if (!all.length) return;
    focus = Math.max(0, Math.min(all.length - 1, i));
    all.forEach((c, n) => c.classList.toggle("focus", n === focus));
    all[focus].scrollIntoView({block: "nearest"});
  }

  async function post(url, fields) {
    if (busy) return null;
    busy = true;
    flash("working…", false);
    try {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: {"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
        body: new URLSearchParams(fields)});
      const answer = await response.json();
      if (!response.ok) {
        flash(answer.error || ("failed: " + response.status), true);
        return null;
      }
      flash(answer.message || "done", false);
      return answer;
    } catch (e) {
      flash("the server did not answer: is `vdc-lake review` still running?", true);
      return null;
    } finally {
      busy = false;
    }
  }

  function refresh() {
    htmx.trigger(document.body, "refresh");
    htmx.ajax("GET", location.pathname + location.search, {target: "#main", select: "#main", swap: "outerHTML"});
  }

  async function act(action, fields) {
    const reason = document.getElementById("reason").value;
    const done = await post("/act", Object.assign({action: action, reason: reason}, fields));
    if (done) refresh();
  }

  function actOnChosen(action) {
    let ids = selected();
    if (!ids.length) {
      const all = cards();
      const page = document.querySelector(".image-page");
      if (all.length) ids = [all[focus].dataset.imageId];
      else if (page) ids = [page.dataset.imageId];
    }
    if (!ids.length) { flash("select a card first (x), or move to one (← →)", true); return; }
    act(action, {images: ids.join(",")});
  }

  async function undo() {
    const done = await post("/undo", {});
    if (done) refresh();
  }

  function decorate() {
    cards().forEach((card) => {
      if (card.querySelector(".card-actions")) return;
      const bar = document.createElement("div");
      bar.className = "card-actions";
      for (const [action, label] of [["keep", "keep"], ["drop", "drop"], ["clear", "clear"]]) {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = label; b.dataset.cardAct = action;
        bar.appendChild(b);
      }
      const box = document.createElement("input");
      box.type = "checkbox"; box.title = "select (x)"; box.className = "pick";
      bar.appendChild(box);
      if (card.dataset.group) {
        const a = document.createElement("a");
        a.href = "/group/" + card.dataset.group; a.textContent = "group";
        bar.appendChild(a);
      }
      card.appendChild(bar);
    });
    setFocus(Math.min(focus, cards().length - 1));
    showSelection();
  }

  async function label(isDuplicate) {
    const pair = document.getElementById("pair");
    if (!pair) { flash("every pair is labelled", true); return; }
    const done = await post("/label", {image_a: pair.dataset.imageA, image_b: pair.dataset.imageB,
                                       is_duplicate: isDuplicate ? "true" : "false"});
    if (done) htmx.trigger(document.body, "labelled");
  }

  document.addEventListener("click", (event) => {
    const t = event.target;
    if (t.dataset.cardAct) {
      act(t.dataset.cardAct, {images: t.closest("figure.card").dataset.imageId});
    } else if (t.classList.contains("pick")) {
      t.closest("figure.card").classList.toggle("selected", t.checked);
      showSelection();
    } else if (t.dataset.actGroup) {
      act(t.dataset.act, {group: t.dataset.actGroup});
    } else if (t.dataset.actCluster) {
      act(t.dataset.act, {cluster: t.dataset.actCluster});
    } else if (t.dataset.actImage) {
      act(t.dataset.act, {images: t.dataset.actImage});
    } else if (t.dataset.act && t.closest("#actionbar")) {
      actOnChosen(t.dataset.act);
    } else if (t.id === "undo") {
      undo();
    } else if (t.dataset.label) {
      label(t.dataset.label === "true");
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName) && event.target.type !== "checkbox"
        && event.target.type !== "range") return;
    const key = event.key;
    if (document.getElementById("label-mode")) {
      if (key === "d") label(true);
      else if (key === "n") label(false);
      return;
    }
    const all = cards();
    if (key === "ArrowRight" || key === "l") setFocus(focus + 1);
    else if (key === "ArrowLeft" || key === "j") setFocus(focus - 1);
    else if (key === "x" && all.length) {
      const card = all[focus];
      const on = !card.classList.contains("selected");
      card.classList.toggle("selected", on);
      card.querySelector(".pick").checked = on;
      showSelection();
    } else if (key === "k") actOnChosen("keep");
    else if (key === "d") actOnChosen("drop");
    else if (key === "c") actOnChosen("clear");
    else if (key === "u") undo();
    else if (key === "g" && all.length && all[focus].dataset.group) location.href = "/group/" + all[focus].dataset.group;
    else return;
    event.preventDefault();
  });

  document.addEventListener("input", (event) => {
    const t = event.target;
    if (t.type === "range" && t.dataset.key) {
      document.getElementById("value-" + t.dataset.key).textContent = Number(t.value).toPrecision(4);
    }
  });

  document.body.addEventListener("htmx:afterSettle", decorate);
  decorate();
})();

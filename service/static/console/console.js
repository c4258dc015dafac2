/* The web console: a plain client of the /v1 JSON API (no framework, no build step).
 *
 * - The API key is asked once and kept in sessionStorage (this tab only), sent as X-API-Key.
 * - Errors are shown as the server words them (the `message` of its {"error", "message"} body).
 * - Everything user-supplied (names, file names, messages) is put in the page with textContent.
 */
"use strict";

(() => {
  const KEY_STORAGE = "facerec.apiKey";
  const ATTENDANCE_STORAGE = "facerec.attendance";
  const VISITS_STORAGE = "facerec.visits";
  const FINAL_JOB_STATES = new Set(["finished", "failed", "canceled", "stopped"]);
  const STATUS_TEXT = {
    pending: "Waiting",
    enrolled: "Enrolled",
    largest: "Enrolled: largest face",
    several_faces: "Several faces",
    duplicate: "Duplicate",
    no_face: "No face",
    too_small: "Face too small",
    unreadable: "Unreadable",
    expired: "Expired",
    person_deleted: "Person deleted",
    image_deleted: "Photo deleted",
    error: "Error",
  };
  const STATUS_SUMMARY = {
    enrolled: "enrolled", duplicate: "duplicate", no_face: "no face", too_small: "too small",
    several_faces: "several faces", unreadable: "unreadable", expired: "expired", person_deleted: "person deleted",
    image_deleted: "photo deleted", error: "error",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    auth: null,            // "open" | "api_keys" (from /health)
    key: sessionStorage.getItem(KEY_STORAGE) || "",
    model: "",             // the model version the server runs (from /health)
    scoreDigits: 3,        // decimals that show the model's threshold as it is (0.99994, not 1.000)
    people: [],            // every person, from GET /v1/people (all pages)
    peopleLoaded: false,
    enrollFiles: [],       // [{file, url, row}]
    enrollBusy: false,
    identifySeq: 0,
    identifyUrl: null,
    attendance: loadStored(ATTENDANCE_STORAGE, {}),  // person_id -> {name, cosine, seen_at, photo}
  };

  // -- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showError(box, message) {
    box.textContent = message || "";
    box.hidden = !message;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many || one + "s"}`;
  const fmtScore = (cosine) => (typeof cosine === "number" ? cosine.toFixed(state.scoreDigits) : "");

  /** Decimals (3 to 6) that show two significant digits of a threshold's distance from 1:
   *  0.99994 must not read "1.000", and scores printed alike can be compared with it by eye. */
  function scoreDigits(threshold) {
    const gap = 1 - threshold;
    return gap > 0 ? Math.min(6, Math.max(3, Math.floor(-Math.log10(gap)) + 2)) : 3;
  }

  function loadStored(key, fallback) {
    try {
      return JSON.parse(sessionStorage.getItem(key) || "null") || fallback;
    } catch (_) {
      return fallback;
    }
  }

  function fmtDate(seconds) {
    if (!seconds) return "";
    const d = new Date(seconds * 1000);
    return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  function fmtSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  // -- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Call the API; resolve with the JSON body, or reject with the server's own message. */
  async function api(method, path, body, { key } = {}) {
    const headers = { Accept: "application/json" };
    const useKey = key !== undefined ? key : state.key;
    if (useKey) headers["X-API-Key"] = useKey;
    let response;
    try {
      response = await fetch(path, { method, headers, body, cache: "no-store" });
    } catch (exc) {
      throw new ApiError(0, "network", `The server could not be reached (${exc.message}).`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.message === "string" && data.message
        ? data.message : `HTTP ${response.status} ${response.statusText}`.trim();
      const error = new ApiError(response.status, data && data.error, message);
      if (response.status === 401 && key === undefined) askForKey(message);
      throw error;
    }
    return data;
  }

  // -- API key ---------------------------------------------------------------------------

  const keyDialog = $("key-dialog");

  function renderKeyState() {
    const open = state.auth === "open";
    $("key-state").textContent = open
      ? "Open server: no API key needed"
      : state.key ? "API key set for this tab" : "No API key";
    $("key-change").hidden = open || state.auth === null;
    $("key-change").textContent = state.key ? "Change API key" : "Enter API key";
    $("key-forget").hidden = open || !state.key;
  }

  function askForKey(message) {
    showError($("key-error"), message || "");
    $("key-input").value = "";
    if (!keyDialog.open) keyDialog.showModal();
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = $("key-input").value.trim();
    if (!candidate) {
      showError($("key-error"), "Type the API key you were given.");
      return;
    }
    $("key-submit").disabled = true;
    try {
      await api("GET", "/v1/people?limit=1", undefined, { key: candidate });
      state.key = candidate;
      sessionStorage.setItem(KEY_STORAGE, candidate);
      showError($("key-error"), "");
      keyDialog.close();
      renderKeyState();
      showError($("global-error"), "");
      refreshPeople();
    } catch (error) {
      showError($("key-error"), error.message);
      $("key-input").select();
    } finally {
      $("key-submit").disabled = false;
    }
  });
  $("key-cancel").addEventListener("click", () => keyDialog.close());
  keyDialog.addEventListener("close", () => {
    if (state.auth === "api_keys" && !state.key) {
      showError($("global-error"), "No API key: the console cannot use the API until you enter one (button at the top).");
    }
  });
  $("key-change").addEventListener("click", () => askForKey(""));
  $("key-forget").addEventListener("click", () => {
    state.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    state.people = [];
    renderPeople();
    renderRoster();
    renderKeyState();
    askForKey("");
  });

  // -- confirmation ----------------------------------------------------------------------

  function confirmAction(text, okLabel) {
    const dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel || "Delete";
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("confirm-cancel").focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    });
  }

  // -- tabs ------------------------------------------------------------------------------

  const tabs = [$("tab-enroll"), $("tab-identify"), $("tab-camera")];

  function selectTab(tab, focus) {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !selected;
    }
    if (tab.id !== "tab-camera" && camera.stream) stopCamera("Camera stopped: you left the checkpoint tab.");
    if (focus) tab.focus();
    history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
  }

  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (event) => {
      let next = null;
      if (event.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
      else if (event.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
      else if (event.key === "Home") next = tabs[0];
      else if (event.key === "End") next = tabs[tabs.length - 1];
      if (next) {
        event.preventDefault();
        selectTab(next, true);
      }
    });
  });

  // -- drop zones (each is a <label> around a real file input: keyboard and screen readers
  //    use the input, a mouse can also drop files on the zone) ----------------------------

  function dropZone(zone, input, onFiles) {
    input.addEventListener("change", () => {
      if (input.files && input.files.length) onFiles(Array.from(input.files));
      input.value = "";  // choosing the same file again must fire change again
    });
    let depth = 0;
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      depth += 1;
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("dragover");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0;
      zone.classList.remove("dragover");
      const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
      if (files.length) onFiles(files);
    });
  }

  // A file dropped next to a zone must not make the browser leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  // -- people ----------------------------------------------------------------------------

  async function fetchAllPeople() {
    const people = [];
    for (let offset = 0; ; ) {
      const page = await api("GET", `/v1/people?offset=${offset}&limit=1000`);
      people.push(...page.people);
      offset += page.people.length;
      if (!page.people.length || offset >= page.total) return people;
    }
  }

  async function refreshPeople() {
    if (state.auth === "api_keys" && !state.key) return;
    try {
      state.people = await fetchAllPeople();
      state.peopleLoaded = true;
      showError($("people-error"), "");
    } catch (error) {
      showError($("people-error"), error.message);
    }
    renderPeople();
    renderTargets();
    renderRoster();
    renderServerInfo();
  }

  function renderServerInfo() {
    const parts = [`Model ${state.model}`];
    if (state.peopleLoaded) parts.push(`${plural(state.people.length, "person", "people")} enrolled`);
    $("server-info").textContent = parts.join(" · ");
  }

  function renderPeople() {
    const tbody = $("people").tBodies[0];
    tbody.replaceChildren();
    const images = state.people.reduce((n, p) => n + (p.image_count || 0), 0);
    $("people-summary").textContent = !state.peopleLoaded ? ""
      : state.people.length
        ? `${plural(state.people.length, "person", "people")}, ${plural(images, "photo")} enrolled.`
        : "Nobody is enrolled yet.";
    for (const person of state.people) {
      const detailsId = `photos-${person.person_id}`;
      const photosButton = el("button", {
        type: "button", class: "small", "aria-expanded": "false", "aria-controls": detailsId,
        "aria-label": `Photos of ${person.name}`, text: "Photos",
      });
      const row = el("tr", { "data-person-id": person.person_id },
        el("th", { scope: "row", class: "person-name", text: person.name }),
        el("td", { class: "num photo-count", text: String(person.image_count || 0) }),
        el("td", { class: "col-added", text: fmtDate(person.created_at) }),
        el("td", { class: "row-actions" },
          photosButton,
          el("button", {
            type: "button", class: "small", "aria-label": `Add photos of ${person.name}`, text: "Add photos",
            onclick: () => {
              $("enroll-target").value = person.person_id;
              onTargetChange();
              $("enroll-files").focus();
            },
          }),
          el("button", {
            type: "button", class: "small danger", "aria-label": `Delete ${person.name}`, text: "Delete",
            onclick: () => deletePerson(person),
          })));
      const details = el("tr", { class: "photos-row", id: detailsId, hidden: true },
        el("td", { colspan: "4" }));
      photosButton.addEventListener("click", () => togglePhotos(person, photosButton, details));
      tbody.append(row, details);
    }
  }

  async function togglePhotos(person, button, details) {
    const open = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", String(!open));
    details.hidden = open;
    if (!open) await loadPhotos(person, details.firstChild);
  }

  async function loadPhotos(person, cell) {
    cell.replaceChildren(el("p", { class: "muted", text: "Loading photos…" }));
    let body;
    try {
      body = await api("GET", `/v1/people/${encodeURIComponent(person.person_id)}`);
    } catch (error) {
      cell.replaceChildren(el("p", { class: "error", role: "alert", text: error.message }));
      return;
    }
    if (!body.images.length) {
      cell.replaceChildren(el("p", { class: "muted", text: `No photos of ${person.name} are enrolled (for model ${body.model_version}).` }));
      return;
    }
    const list = el("ul", { class: "photo-list", "aria-label": `Photos of ${person.name}` });
    body.images.forEach((image, i) => {
      const label = image.filename || `photo ${i + 1}`;
      const facts = [`#${image.image_hash.slice(0, 10)}`];
      if (image.enrolled_at) facts.push(`enrolled ${fmtDate(image.enrolled_at)}`);
      if (image.faces_found > 1) facts.push(`${image.faces_found} faces, largest used`);
      list.append(el("li", {},
        el("span", { class: "photo-name", text: label }),
        el("span", { class: "muted", text: facts.join(" · ") }),
        el("button", {
          type: "button", class: "small danger", "aria-label": `Delete photo ${label} of ${person.name}`,
          text: "Delete photo", onclick: () => deletePhoto(person, image, label, cell),
        })));
    });
    cell.replaceChildren(list);
  }

  async function deletePerson(person) {
    const ok = await confirmAction(
      `Delete ${person.name} and all ${plural(person.image_count || 0, "photo")}? They will no longer be recognised.`,
      "Delete person");
    if (!ok) return;
    try {
      await api("DELETE", `/v1/people/${encodeURIComponent(person.person_id)}`);
      delete state.attendance[person.person_id];
      saveAttendance();
    } catch (error) {
      showError($("people-error"), error.message);
      return;
    }
    await refreshPeople();
    $("people-summary").textContent = `${person.name} was deleted. ${$("people-summary").textContent}`;
    $("people-title").focus();  // the button that had focus is gone
  }

  async function deletePhoto(person, image, label, cell) {
    const ok = await confirmAction(`Delete the photo “${label}” of ${person.name}?`, "Delete photo");
    if (!ok) return;
    try {
      const body = await api("DELETE",
        `/v1/people/${encodeURIComponent(person.person_id)}/images/${encodeURIComponent(image.image_hash)}`);
      Object.assign(person, body.person);
      const row = document.querySelector(`tr[data-person-id="${CSS.escape(person.person_id)}"] .photo-count`);
      if (row) row.textContent = String(person.image_count || 0);
      await loadPhotos(person, cell);
      renderTargets();
      renderRoster();
      $("people-summary").textContent = `The photo ${label} of ${person.name} was deleted.`;
      const toggle = document.querySelector(`[aria-controls="${CSS.escape(`photos-${person.person_id}`)}"]`);
      if (toggle) toggle.focus();  // the deleted photo's button is gone
    } catch (error) {
      showError($("people-error"), error.message);
    }
  }

  $("people-refresh").addEventListener("click", () => refreshPeople());

  // -- enroll ----------------------------------------------------------------------------

  function renderTargets() {
    const select = $("enroll-target");
    const current = select.value;
    select.replaceChildren(el("option", { value: "", text: "A new person" }));
    for (const person of state.people) {
      select.append(el("option", { value: person.person_id, text: `${person.name} (${plural(person.image_count || 0, "photo")})` }));
    }
    select.value = state.people.some((p) => p.person_id === current) ? current : "";
    onTargetChange();
  }

  function onTargetChange() {
    const existing = $("enroll-target").value !== "";
    $("enroll-name-field").hidden = existing;
  }
  $("enroll-target").addEventListener("change", onTargetChange);

  function resetEnrollList() {
    for (const item of state.enrollFiles) URL.revokeObjectURL(item.url);
    state.enrollFiles = [];
    $("enroll-list").replaceChildren();
    $("enroll-progress-block").hidden = true;
    $("enroll-status").textContent = "";
    $("enroll-form").classList.remove("submitted");
  }

  function addEnrollFiles(files) {
    if (state.enrollBusy) return;
    if ($("enroll-form").classList.contains("submitted")) resetEnrollList();  // a new batch
    showError($("enroll-error"), "");
    for (const file of files) {
      const url = URL.createObjectURL(file);
      const badge = el("span", { class: "badge pending", text: STATUS_TEXT.pending });
      const detail = el("span", { class: "file-detail muted", text: fmtSize(file.size) });
      const remove = el("button", { type: "button", class: "small remove", "aria-label": `Remove ${file.name}`, text: "Remove" });
      const row = el("li", { class: "file-row" },
        el("img", { class: "thumb", src: url, alt: "", onerror: (e) => e.target.classList.add("broken") }),
        el("span", { class: "file-main" }, el("span", { class: "file-name", text: file.name }), detail),
        badge, remove);
      const item = { file, url, row, badge, detail };
      remove.addEventListener("click", () => {
        URL.revokeObjectURL(url);
        state.enrollFiles = state.enrollFiles.filter((x) => x !== item);
        row.remove();
        $("enroll-status").textContent = `${file.name} removed; ${plural(state.enrollFiles.length, "photo")} to enroll.`;
        $("enroll-files").focus();
      });
      state.enrollFiles.push(item);
      $("enroll-list").append(row);
    }
    $("enroll-status").textContent = `${plural(state.enrollFiles.length, "photo")} ready to enroll.`;
  }

  dropZone($("enroll-drop"), $("enroll-files"), addEnrollFiles);

  $("enroll-clear").addEventListener("click", () => {
    if (state.enrollBusy) return;
    resetEnrollList();
    showError($("enroll-error"), "");
    $("enroll-name").value = "";
  });

  function setResult(item, result) {
    let status = result.status;
    // Several faces: one clearly larger is enrolled (and said so); similar sizes are refused.
    if (status === "enrolled" && result.faces_found > 1) status = "largest";
    item.badge.className = `badge ${status}`;
    item.badge.textContent = STATUS_TEXT[status] || status;
    const details = [];
    if (status === "largest") details.push(result.message || `${result.faces_found} faces found; the largest was enrolled`);
    else if (status === "duplicate") details.push("this photo was already enrolled for this person");
    else if (result.message) details.push(result.message);
    item.detail.textContent = details.length ? details.join(" ") : fmtSize(item.file.size);
    item.row.dataset.status = result.status;
  }

  function renderJob(job, items) {
    const progress = job.progress || {};
    const total = progress.total || items.length;
    const done = progress.done || (job.results || []).length;
    for (const result of job.results || []) {
      const item = items[result.index];
      if (item) setResult(item, result);
    }
    const bar = $("enroll-progress");
    bar.max = total || 1;
    bar.value = done;
    let text;
    if (job.status === "queued" || job.status === "deferred" || job.status === "scheduled") {
      text = `Queued: waiting for an enrollment worker (${done} of ${total} photos processed).`;
    } else if (job.status === "finished") {
      const summary = job.summary || {};
      const order = Object.keys(STATUS_SUMMARY).concat(Object.keys(summary).filter((s) => !(s in STATUS_SUMMARY)));
      const counts = order.filter((s) => summary[s]).map((s) => `${summary[s]} ${STATUS_SUMMARY[s] || s}`);
      text = `Done: ${done} of ${total} photos processed${counts.length ? ": " + counts.join(", ") : ""}.`;
    } else if (job.status === "failed") {
      text = `The enrollment job failed after ${done} of ${total} photos${job.error ? ": " + job.error : "."}`;
    } else {
      text = `Processing: ${done} of ${total} photos.`;
    }
    $("enroll-status").textContent = text;
  }

  async function pollJob(jobId, items) {
    let delay = 250;
    let failures = 0;
    for (;;) {
      let job;
      try {
        job = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`);
        failures = 0;
      } catch (error) {
        failures += 1;
        if (error.status === 404 || error.status === 401 || error.status === 403 || failures >= 5) throw error;
        await sleep(1000 * failures);
        continue;
      }
      renderJob(job, items);
      if (FINAL_JOB_STATES.has(job.status)) return job;
      await sleep(delay);
      delay = Math.min(Math.round(delay * 1.4), 2000);
    }
  }

  $("enroll-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (state.enrollBusy) return;
    const errorBox = $("enroll-error");
    showError(errorBox, "");
    const target = $("enroll-target").value;
    const name = $("enroll-name").value.trim();
    if (!target && !name) {
      showError(errorBox, "Type the person's name.");
      $("enroll-name").focus();
      return;
    }
    if ($("enroll-form").classList.contains("submitted") || !state.enrollFiles.length) {
      showError(errorBox, "Choose or drop at least one photo first.");
      $("enroll-files").focus();
      return;
    }
    const items = state.enrollFiles.slice();
    const form = new FormData();
    if (target) form.append("person_id", target);
    else form.append("name", name);
    for (const item of items) form.append("images", item.file, item.file.name);

    state.enrollBusy = true;
    $("enroll-submit").disabled = true;
    $("enroll-clear").disabled = true;
    $("enroll-form").classList.add("submitted");
    $("enroll-form").setAttribute("aria-busy", "true");
    for (const item of items) item.row.querySelector(".remove").remove();
    $("enroll-progress-block").hidden = false;
    $("enroll-progress").max = items.length;
    $("enroll-progress").value = 0;
    $("enroll-status").textContent = `Uploading ${plural(items.length, "photo")}…`;
    let accepted = null;
    try {
      accepted = await api("POST", "/v1/enroll", form);
      const who = accepted.people && accepted.people[0];
      $("enroll-status").textContent = `Uploaded; ${who && who.created ? `${who.name} was added. ` : ""}Waiting for the enrollment worker…`;
      await refreshPeople();
      const job = await pollJob(accepted.job_id, items);
      if (job.status === "failed") showError(errorBox, `The enrollment job failed${job.error ? ": " + job.error : "."}`);
      if (!target) $("enroll-name").value = "";
    } catch (error) {
      showError(errorBox, error.message);
      if (!accepted) {
        // Refused before any job existed: nothing was stored; the same photos can be sent again.
        $("enroll-status").textContent = "Nothing was enrolled from this batch.";
        $("enroll-form").classList.remove("submitted");
        $("enroll-progress-block").hidden = true;
      } else {
        $("enroll-status").textContent = `Lost track of enrollment job ${accepted.job_id}; the people list shows what was stored.`;
      }
    } finally {
      state.enrollBusy = false;
      $("enroll-submit").disabled = false;
      $("enroll-clear").disabled = false;
      $("enroll-form").removeAttribute("aria-busy");
      await refreshPeople();
    }
  });

  // -- identify & attendance -------------------------------------------------------------

  function saveAttendance() {
    sessionStorage.setItem(ATTENDANCE_STORAGE, JSON.stringify(state.attendance));
  }

  async function identify(files) {
    const file = files[0];
    if (!file) return;
    const seq = ++state.identifySeq;
    const status = $("identify-status");
    showError($("identify-error"), "");
    if (state.identifyUrl) URL.revokeObjectURL(state.identifyUrl);
    state.identifyUrl = URL.createObjectURL(file);
    const img = $("identify-img");
    img.alt = `The photo ${file.name}`;
    img.src = state.identifyUrl;
    $("identify-boxes").replaceChildren();
    $("identify-faces").replaceChildren();
    $("identify-rule").hidden = true;
    $("identify-figure").hidden = false;
    $("identify-figure").setAttribute("aria-busy", "true");
    status.textContent = `Looking for faces in ${file.name}…`;
    const form = new FormData();
    form.append("image", file, file.name);
    let result;
    try {
      [result] = await Promise.all([api("POST", "/v1/identify", form), img.decode().catch(() => null)]);
    } catch (error) {
      if (seq !== state.identifySeq) return;
      $("identify-figure").removeAttribute("aria-busy");
      status.textContent = "";
      showError($("identify-error"), error.message);
      return;
    }
    if (seq !== state.identifySeq) return;  // a newer photo was dropped meanwhile
    $("identify-figure").removeAttribute("aria-busy");
    renderFaces(result, file.name);
    const now = new Date().toISOString();
    for (const face of result.faces) {
      if (face.decision !== "match" || !face.person) continue;
      const seen = state.attendance[face.person.person_id];
      if (!seen || face.person.cosine > seen.cosine) {
        state.attendance[face.person.person_id] = {
          name: face.person.name, cosine: face.person.cosine, seen_at: now, photo: file.name,
        };
      }
    }
    saveAttendance();
    renderRoster();
    const known = result.faces.filter((f) => f.decision === "match").length;
    status.textContent = result.faces.length
      ? `${plural(result.faces.length, "face")} found in ${file.name}: ${known} recognised, ${result.faces.length - known} unknown.`
      : `No face found in ${file.name}.`;
  }

  /** A box over every face, labelled "n. name score" or "n. unknown", in percentages of the
   *  picture's own size (width x height pixels): the boxes follow it at any displayed size. */
  function drawBoxes(container, faces, width, height) {
    container.replaceChildren();
    if (!width || !height) return;
    faces.forEach((face, i) => {
      const [x0, y0, x1, y1] = face.box;
      const known = face.decision === "match" && face.person;
      const label = known ? `${face.person.name} ${fmtScore(face.person.cosine)}` : "unknown";
      const box = el("div", { class: `face-box ${known ? "known" : "unknown"}`, "data-face": String(i + 1) },
        el("span", {
          // Above the box (inside it at the top edge), growing away from the nearer side edge.
          class: `face-label${y0 / height < 0.08 ? " inside" : ""}${(x0 + x1) / 2 > width / 2 ? " end" : ""}`,
          title: `${i + 1}. ${label}`,
        }, el("span", { class: "face-num", text: `${i + 1}.` }), el("span", { class: "face-name", text: ` ${label}` })));
      box.style.left = `${Math.max(0, x0) / width * 100}%`;
      box.style.top = `${Math.max(0, y0) / height * 100}%`;
      box.style.width = `${(Math.min(width, x1) - Math.max(0, x0)) / width * 100}%`;
      box.style.height = `${(Math.min(height, y1) - Math.max(0, y0)) / height * 100}%`;
      container.append(box);
    });
    fitLabels(container);
  }

  function renderFaces(result, photoName) {
    const img = $("identify-img");
    const list = $("identify-faces");
    drawBoxes($("identify-boxes"), result.faces, img.naturalWidth, img.naturalHeight);
    result.faces.forEach((face) => {
      const known = face.decision === "match" && face.person;
      const best = face.matches && face.matches[0];
      const text = known
        ? `${face.person.name}, score ${fmtScore(face.person.cosine)}`
        : `unknown${best ? ` (closest: ${best.name}, score ${fmtScore(best.cosine)})` : ""}`;
      list.append(el("li", { class: known ? "known" : "unknown" }, text));
    });
    if (!result.faces.length) list.append(el("li", { class: "none", text: `No face found in ${photoName}.` }));
    $("identify-faces").setAttribute("aria-label",
      `Faces found (match at score ${fmtScore(result.threshold)} or more)`);
    $("identify-rule").textContent = ruleText(result);
    $("identify-rule").hidden = false;
  }

  /** Why identify matched at the score it did: the model's threshold, or one raised with the
   *  gallery's size so that strangers stay rare (the server's STRANGER_RATE). */
  function ruleText(result) {
    const at = `A face matches at score ${fmtScore(result.threshold)} or more`;
    const rule = result.stranger_rate;
    if (result.threshold_source === "request") return `${at} (the threshold this request asked for).`;
    if (result.threshold_source !== "stranger_rate" || !rule) return `${at} (the model's threshold).`;
    const percent = `${+(rule.target * 100).toPrecision(3)}%`;
    const who = rule.people === 1 ? "the 1 person enrolled" : `any of the ${rule.people} people enrolled`;
    return `${at}: set so that a stranger matches ${who} at most ${percent} of the time` +
      (rule.within_curve ? "." : ", as far as the model's stranger curve can tell: it was measured on too few " +
        "strangers for this many people, so this is the lowest score none of them reached.");
  }

  /** Labels that would cover one another (small display, crowded photo) shrink to their number;
   *  the numbered list under the photo always has every name. Largest faces keep their names. */
  function fitLabels(container) {
    const labels = Array.from(container.querySelectorAll(".face-label"));
    labels.forEach((label) => label.classList.remove("compact"));
    const placed = [];
    for (const label of labels) {
      const r = label.getBoundingClientRect();
      const hits = (q) => r.left < q.right && q.left < r.right && r.top < q.bottom && q.top < r.bottom;
      if (placed.some(hits)) label.classList.add("compact");
      placed.push(label.getBoundingClientRect());
    }
  }

  new ResizeObserver(() => fitLabels($("identify-boxes"))).observe($("identify-stage"));

  function renderRoster() {
    const tbody = $("roster").tBodies[0];
    tbody.replaceChildren();
    const people = rosterRows();
    const present = people.filter((r) => r.present).length;
    $("roster-summary").textContent = !state.peopleLoaded ? ""
      : people.length ? `${present} of ${plural(people.length, "person", "people")} present.`
        : "Nobody is enrolled yet: enroll people first.";
    for (const r of people) {
      tbody.append(el("tr", { class: r.present ? "present" : "absent", "data-person-id": r.person_id },
        el("th", { scope: "row", text: r.name }),
        el("td", {}, el("span", { class: `badge ${r.present ? "present" : "absent"}`, text: r.present ? "Present" : "Absent" })),
        el("td", { class: "num", text: r.present ? fmtScore(r.cosine) : "" })));
    }
    $("roster-csv").disabled = !people.length;
  }

  function rosterRows() {
    return state.people
      .map((p) => {
        const seen = state.attendance[p.person_id];
        return {
          person_id: p.person_id, name: p.name, present: Boolean(seen),
          cosine: seen ? seen.cosine : null, seen_at: seen ? seen.seen_at : "", photo: seen ? seen.photo : "",
        };
      })
      .sort((a, b) => a.name.localeCompare(b.name) || a.person_id.localeCompare(b.person_id));
  }

  function csvField(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;  // a spreadsheet must not run a name as a formula
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function downloadCsv() {
    const lines = [["name", "person_id", "status", "score", "seen_at", "photo"]];
    for (const r of rosterRows()) {
      lines.push([r.name, r.person_id, r.present ? "present" : "absent",
        r.present ? r.cosine.toFixed(Math.max(4, state.scoreDigits)) : "", r.seen_at, r.photo]);
    }
    saveCsv("attendance", lines);
  }

  /** Offer `lines` (header first) as <prefix>-<date>-<time>.csv, made in the browser. */
  function saveCsv(prefix, lines) {
    const text = lines.map((line) => line.map(csvField).join(",")).join("\r\n") + "\r\n";
    // A byte-order mark so that spreadsheet programs read accented names as UTF-8.
    const blob = new Blob(["\ufeff", text], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().slice(0, 16).replace("T", "-").replace(":", "");
    const link = el("a", { href: url, download: `${prefix}-${stamp}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  dropZone($("identify-drop"), $("identify-file"), identify);
  $("roster-csv").addEventListener("click", downloadCsv);
  $("roster-reset").addEventListener("click", async () => {
    if (Object.keys(state.attendance).length &&
        !(await confirmAction("Start a new register? Everyone will be marked absent again.", "New register"))) {
      return;
    }
    state.attendance = {};
    saveAttendance();
    renderRoster();
    $("roster-summary").textContent += " New register started.";
  });

  // -- camera checkpoint -----------------------------------------------------------------
  // The camera's picture is checked one frame at a time: a frame is taken about every second
  // (FRAME_INTERVAL_MS after the previous one was taken, or when its answer arrives if that is
  // later), so there is never more than one /v1/identify request in flight, however slow the
  // server. A person is announced and logged once per appearance: they count as gone after
  // GONE_AFTER_FRAMES answered frames in a row without them, and seen again after that is a new visit.

  const FRAME_INTERVAL_MS = 1000;
  const GONE_AFTER_FRAMES = 3;
  const FRAME_MAX_SIDE = 640;  // frames are scaled down to this before upload: faces stay large enough
  const camera = {
    stream: null,
    starting: false,
    timer: null,
    busy: false,          // a frame's request is in flight
    generation: 0,        // bumped on stop: an answer for a stopped camera is dropped
    frames: 0,
    present: new Map(),   // person_id -> {missed, visit}: who is in front of the camera now
    visits: loadStored(VISITS_STORAGE, []),  // [{person_id, name, seen_at, score}], newest first
    canvas: document.createElement("canvas"),
  };

  function cameraErrorText(error) {
    const name = error && error.name;
    if (name === "NotAllowedError" || name === "PermissionDeniedError" || name === "SecurityError") {
      return "The camera permission was refused, so the checkpoint cannot see anyone. Allow the camera for " +
        "this site (the camera icon in the address bar, or the browser's site settings), then press Start camera.";
    }
    if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
      return "No camera was found on this computer. Connect a camera, then press Start camera.";
    }
    if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
      return "The camera could not be started: another program may be using it. Close that program, then press Start camera.";
    }
    return `The camera could not be started (${name || "error"}: ${(error && error.message) || "no details"}).`;
  }

  async function startCamera() {
    if (camera.stream || camera.starting) return;
    showError($("camera-error"), "");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError($("camera-error"), window.isSecureContext
        ? "This browser cannot use a camera."
        : "The browser gives the camera only to pages opened over HTTPS or from this computer itself " +
          "(http://localhost or http://127.0.0.1): open the console that way to use the camera.");
      return;
    }
    camera.starting = true;
    $("camera-start").disabled = true;
    $("camera-status").textContent = "Asking for the camera…";
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: false, video: { width: { ideal: 1280 }, height: { ideal: 720 } } });
    } catch (error) {
      $("camera-status").textContent = "Camera off.";
      showError($("camera-error"), cameraErrorText(error));
      return;
    } finally {
      camera.starting = false;
      $("camera-start").disabled = false;
    }
    if ($("panel-camera").hidden) {  // the operator left the tab while the browser was asking
      stream.getTracks().forEach((track) => track.stop());
      $("camera-status").textContent = "Camera off.";
      return;
    }
    const video = $("camera-video");
    video.srcObject = stream;
    camera.stream = stream;
    camera.generation += 1;
    camera.present.clear();
    for (const track of stream.getVideoTracks()) {
      track.addEventListener("ended", () => stopCamera("The camera was disconnected."));
    }
    $("camera-stage").hidden = false;
    $("camera-start").disabled = true;
    $("camera-stop").disabled = false;
    $("camera-status").textContent = "Camera on: checking about one frame a second.";
    try {
      await video.play();
    } catch (_) {
      // play() rejects when stopped meanwhile; a live stream with autoplay blocked still gives frames
    }
    scheduleFrame(0);
  }

  function stopCamera(message) {
    if (!camera.stream) return;
    camera.stream.getTracks().forEach((track) => track.stop());
    camera.stream = null;
    camera.generation += 1;
    camera.present.clear();
    clearTimeout(camera.timer);
    $("camera-video").srcObject = null;
    $("camera-stage").hidden = true;
    $("camera-boxes").replaceChildren();
    $("camera-start").disabled = false;
    $("camera-stop").disabled = true;
    $("camera-status").textContent = message || "Camera off.";
  }

  function scheduleFrame(delay) {
    clearTimeout(camera.timer);
    camera.timer = setTimeout(sendFrame, Math.max(0, delay));
  }

  /** The video's current picture as a JPEG, at most FRAME_MAX_SIDE pixels on its longer side. */
  function grabFrame(video) {
    const scale = Math.min(1, FRAME_MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const canvas = camera.canvas;
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9))
      .then((blob) => ({ blob, width: canvas.width, height: canvas.height }));
  }

  async function sendFrame() {
    if (!camera.stream || camera.busy) return;
    const video = $("camera-video");
    if (!video.videoWidth || video.readyState < 2) {  // no picture yet
      scheduleFrame(100);
      return;
    }
    const generation = camera.generation;
    const takenAt = performance.now();
    const takenAtIso = new Date().toISOString();
    camera.busy = true;
    let frame = null;
    let result = null;
    let failure = null;
    try {
      frame = await grabFrame(video);
      if (!frame.blob) throw new Error("the browser could not encode the camera picture");
      camera.frames += 1;
      const form = new FormData();
      form.append("image", frame.blob, `camera-frame-${camera.frames}.jpg`);
      result = await api("POST", "/v1/identify", form);
    } catch (error) {
      failure = error;
    } finally {
      camera.busy = false;
    }
    if (generation !== camera.generation) {  // stopped (and maybe restarted) while waiting
      if (camera.stream) scheduleFrame(0);
      return;
    }
    if (failure) {
      showError($("camera-error"), `Frame not checked: ${failure.message}`);
      if (failure.status === 401 || failure.status === 403) {
        stopCamera("Camera stopped: the server refused the API key.");
        return;
      }
    } else {
      showError($("camera-error"), "");
      drawBoxes($("camera-boxes"), result.faces, frame.width, frame.height);
      const known = result.faces.filter((f) => f.decision === "match" && f.person).length;
      $("camera-frame-info").textContent = result.faces.length
        ? `${plural(result.faces.length, "face")} in view: ${known} recognised, ${result.faces.length - known} unknown.`
        : "Nobody in view.";
      noteVisits(result.faces, takenAtIso);
    }
    scheduleFrame(takenAt + FRAME_INTERVAL_MS - performance.now());
  }

  function noteVisits(faces, seenAt) {
    const inView = new Map();  // person_id -> their best match in this frame
    for (const face of faces) {
      if (face.decision !== "match" || !face.person) continue;
      const seen = inView.get(face.person.person_id);
      if (!seen || face.person.cosine > seen.cosine) inView.set(face.person.person_id, face.person);
    }
    for (const [personId, here] of camera.present) {
      if (inView.has(personId)) continue;
      here.missed += 1;
      if (here.missed >= GONE_AFTER_FRAMES) camera.present.delete(personId);
    }
    const arrived = [];
    for (const [personId, person] of inView) {
      const here = camera.present.get(personId);
      if (here) {
        here.missed = 0;
        here.visit.score = Math.max(here.visit.score, person.cosine);  // the best look of this visit
      } else {
        const visit = { person_id: personId, name: person.name, seen_at: seenAt, score: person.cosine };
        camera.visits.unshift(visit);
        camera.present.set(personId, { missed: 0, visit });
        arrived.push(visit);
      }
    }
    if (arrived.length) announce(arrived);
    if (inView.size) {
      sessionStorage.setItem(VISITS_STORAGE, JSON.stringify(camera.visits));
      renderVisits();
    }
  }

  function announce(visits) {
    const box = $("camera-announce");
    const names = visits.map((v) => `${v.name} (score ${fmtScore(v.score)})`);
    box.textContent = `Recognised: ${names.join(", ")} at ${new Date(visits[0].seen_at).toLocaleTimeString()}`;
    box.hidden = false;
  }

  function renderVisits() {
    const tbody = $("visits").tBodies[0];
    tbody.replaceChildren();
    for (const v of camera.visits) {
      tbody.append(el("tr", { "data-person-id": v.person_id },
        el("th", { scope: "row", text: v.name }),
        el("td", {}, el("time", { datetime: v.seen_at, text: new Date(v.seen_at).toLocaleTimeString() })),
        el("td", { class: "num", text: fmtScore(v.score) })));
    }
    const people = new Set(camera.visits.map((v) => v.person_id)).size;
    $("visits-summary").textContent = camera.visits.length
      ? `${plural(camera.visits.length, "visit")} by ${plural(people, "person", "people")}.`
      : "Nobody seen yet.";
    $("visits-csv").disabled = !camera.visits.length;
    $("visits-clear").disabled = !camera.visits.length;
  }

  $("camera-start").addEventListener("click", startCamera);
  $("camera-stop").addEventListener("click", () => stopCamera("Camera off."));
  $("visits-csv").addEventListener("click", () => {
    const lines = [["name", "person_id", "seen_at", "score"]];
    for (const v of camera.visits.slice().reverse()) {  // oldest first, as a log reads
      lines.push([v.name, v.person_id, v.seen_at, v.score.toFixed(Math.max(4, state.scoreDigits))]);
    }
    saveCsv("visits", lines);
  });
  $("visits-clear").addEventListener("click", async () => {
    if (!(await confirmAction(`Clear the visit log (${plural(camera.visits.length, "visit")})?`, "Clear log"))) return;
    camera.visits = [];
    sessionStorage.removeItem(VISITS_STORAGE);
    renderVisits();
    $("visits-summary").textContent = "Log cleared. Nobody seen yet.";
  });
  renderVisits();

  // -- start -----------------------------------------------------------------------------

  async function start() {
    const initial = tabs.find((t) => `#${t.id.replace("tab-", "")}` === location.hash) || $("tab-enroll");
    selectTab(initial, false);
    let health;
    try {
      const response = await fetch("/health", { cache: "no-store", headers: { Accept: "application/json" } });
      health = await response.json();  // a 503 (Redis unreachable) still describes the server
    } catch (exc) {
      showError($("global-error"), `The server could not be reached (${exc.message}).`);
      $("server-info").textContent = "Server not reachable.";
      return;
    }
    if (health.status !== "ok") {
      const why = (health.redis && health.redis.error) || "its gallery store (Redis) is unreachable";
      showError($("global-error"), `The server is not ready: ${why}`);
    }
    state.auth = health.auth;
    state.model = health.model_version;
    if (typeof health.model_threshold === "number") state.scoreDigits = scoreDigits(health.model_threshold);
    renderVisits();
    renderServerInfo();
    renderKeyState();
    if (state.auth === "api_keys" && !state.key) {
      askForKey("");
      return;
    }
    await refreshPeople();
  }

  start();
})();

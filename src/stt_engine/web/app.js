// stt-engine web page: plain JavaScript, no build step, no request beyond this server.
"use strict";

const TEXT = {
  en: {
    skip: "Skip to content", views: "Views", tabUpload: "Upload", tabRecord: "Record", tabResult: "Result",
    tabJobs: "Jobs", tabStatus: "Status", uiLanguage: "Page language", apiKey: "API key", keySave: "Use key",
    keyHelp: "Kept in this tab only; sent as Bearer.", dropHelp: "Drop an audio or video file here, or choose one.",
    chooseFile: "Choose file", language: "Language", auto: "Detect", task: "Task", taskTranscribe: "Transcribe",
    taskTranslate: "Translate to English", hotwords: "Hotwords (names, terms)", wordTimestamps: "Word timestamps",
    useJob: "Use a job (for long recordings)", jobHelp: "Files over 10 minutes always run as a job.",
    transcribe: "Transcribe", liveText: "Text so far", micUnavailable:
      "The microphone is unavailable: browsers allow it only on HTTPS or localhost. Open this page over https:// (see the README, \"TLS\").",
    micDenied: "The microphone could not be opened: {0}", recStart: "Start recording", recStop: "Stop",
    recKeep: "Keep the recording (WAV)", recAgain: "Transcribe it again as a file", noResult: "No result yet: upload a file or record.",
    copy: "Copy text", copied: "Copied.", postprocess: "LLM:", ppCorrect: "Correct", ppSummarize: "Summarize", ppMinutes: "Minutes",
    segments: "Segments", refresh: "Refresh", colFile: "File", colStatus: "Status", colProgress: "Progress",
    colCreated: "Created", colActions: "Actions", noJobs: "No jobs yet.", apiDocs: "API documentation (/docs)",
    open: "Open", cancel: "Cancel", remove: "Delete", noFile: "Choose a file first.",
    keyNeeded: "This server needs an API key: enter it in the \"API key\" field above.",
    keyWrong: "The server refused the API key: {0}", retryIn: "retry in {0} s", tooLarge: "The file is too large.",
    sending: "Sending {0}…", decoding: "Transcribing… text appears as it is decoded.", done: "Done in {0} s.",
    jobQueued: "Job {0}: queued.", jobRunning: "Job {0}: {1} of {2} s transcribed.", jobDone: "Job {0}: completed.",
    jobFailed: "Job {0} failed: {1}", jobCancelled: "Job {0} was cancelled.", connecting: "Connecting…",
    listening: "Listening: speak now.", speech: "Hearing speech…", stopped: "Stopped.", wsClosed: "The connection closed: {0}",
    langDetected: "Language: {0} · duration {1} s", stModel: "Model", stDevice: "Device", stStatus: "Status",
    stQueue: "Queue", stQueueValue: "{0} requests, {1} s of audio waiting", stLLM: "LLM server", stLLMNone: "not configured",
    stLLMOk: "reachable ({0})", stLLMBad: "unreachable", stWorkers: "Workers", stCompute: "Compute type",
    ppRunning: "The LLM is working…", statusLoading: "The model is loading; retry in a few seconds.",
    networkError: "The server could not be reached: {0}",
    liveUnavailable: "Live transcription could not start (/v1/realtime: {0}). Check the API key; an older server has no live endpoint.",
    jobNoTranslate: "Jobs transcribe only: untick \"Use a job\" to translate (files up to 10 minutes).",
    speakersOption: "Speakers (who spoke)", speakersHelp: "Labels each part A, B, ... by voice; rename them in the result.",
    speakerNames: "Speakers: rename them here; the downloads use these names", speakerLabel: "Name of speaker {0}",
  },
  ko: {
    skip: "본문으로 건너뛰기", views: "보기", tabUpload: "파일 업로드", tabRecord: "녹음", tabResult: "결과",
    tabJobs: "작업", tabStatus: "상태", uiLanguage: "화면 언어", apiKey: "API 키", keySave: "키 사용",
    keyHelp: "이 탭에만 보관되며 Bearer로 전송됩니다.", dropHelp: "오디오나 동영상 파일을 여기에 끌어다 놓거나 선택하세요.",
    chooseFile: "파일 선택", language: "언어", auto: "자동 감지", task: "작업", taskTranscribe: "받아쓰기",
    taskTranslate: "영어로 번역", hotwords: "핫워드 (이름, 용어)", wordTimestamps: "단어별 타임스탬프",
    useJob: "작업으로 처리 (긴 녹음용)", jobHelp: "10분이 넘는 파일은 항상 작업으로 처리합니다.",
    transcribe: "받아쓰기 시작", liveText: "지금까지의 텍스트", micUnavailable:
      "마이크를 쓸 수 없습니다: 브라우저는 HTTPS나 localhost에서만 마이크를 허용합니다. https://로 여세요 (README의 \"TLS\" 참고).",
    micDenied: "마이크를 열 수 없습니다: {0}", recStart: "녹음 시작", recStop: "중지",
    recKeep: "녹음 저장 (WAV)", recAgain: "파일로 다시 받아쓰기", noResult: "아직 결과가 없습니다: 파일을 올리거나 녹음하세요.",
    copy: "텍스트 복사", copied: "복사했습니다.", postprocess: "LLM:", ppCorrect: "교정", ppSummarize: "요약", ppMinutes: "회의록",
    segments: "구간", refresh: "새로 고침", colFile: "파일", colStatus: "상태", colProgress: "진행",
    colCreated: "생성 시각", colActions: "동작", noJobs: "작업이 없습니다.", apiDocs: "API 문서 (/docs)",
    open: "열기", cancel: "취소", remove: "삭제", noFile: "먼저 파일을 선택하세요.",
    keyNeeded: "이 서버는 API 키가 필요합니다: 위의 \"API 키\" 칸에 입력하세요.",
    keyWrong: "서버가 API 키를 거부했습니다: {0}", retryIn: "{0}초 후 다시 시도하세요", tooLarge: "파일이 너무 큽니다.",
    sending: "{0} 보내는 중…", decoding: "받아쓰는 중… 디코딩되는 대로 텍스트가 나타납니다.", done: "{0}초 만에 끝났습니다.",
    jobQueued: "작업 {0}: 대기 중.", jobRunning: "작업 {0}: {2}초 중 {1}초 처리.", jobDone: "작업 {0}: 완료.",
    jobFailed: "작업 {0} 실패: {1}", jobCancelled: "작업 {0}이(가) 취소되었습니다.", connecting: "연결 중…",
    listening: "듣고 있습니다: 말씀하세요.", speech: "음성 감지…", stopped: "중지했습니다.", wsClosed: "연결이 끊겼습니다: {0}",
    langDetected: "언어: {0} · 길이 {1}초", stModel: "모델", stDevice: "장치", stStatus: "상태",
    stQueue: "대기열", stQueueValue: "요청 {0}개, 오디오 {1}초 대기", stLLM: "LLM 서버", stLLMNone: "설정 안 됨",
    stLLMOk: "연결됨 ({0})", stLLMBad: "연결 안 됨", stWorkers: "워커", stCompute: "연산 형식",
    ppRunning: "LLM이 처리 중입니다…", statusLoading: "모델을 불러오는 중입니다. 잠시 후 다시 시도하세요.",
    networkError: "서버에 연결할 수 없습니다: {0}",
    liveUnavailable: "실시간 받아쓰기를 시작할 수 없습니다 (/v1/realtime: {0}). API 키를 확인하세요. 이전 버전 서버에는 실시간 기능이 없습니다.",
    jobNoTranslate: "작업은 받아쓰기만 합니다: 번역하려면 \"작업으로 처리\"를 해제하세요 (10분 이하 파일).",
    speakersOption: "화자 구분 (누가 말했는지)", speakersHelp: "목소리로 구간마다 A, B, ...를 붙입니다. 결과에서 이름을 바꿀 수 있습니다.",
    speakerNames: "화자: 여기서 이름을 바꾸면 내려받는 파일에도 쓰입니다", speakerLabel: "화자 {0}의 이름",
  },
};

const JOB_THRESHOLD_S = 600;  // longer files go through the jobs API
const $ = (id) => document.getElementById(id);
let lang = localStorage.getItem("stt-ui-lang") || ((navigator.language || "en").toLowerCase().startsWith("ko") ? "ko" : "en");
let result = null;      // {text, language, duration, segments:[{start,end,text,words?,speaker?}], name, names?}
// speaker colours: distinct, each readable under white text (WCAG AA on the chips)
const SPEAKER_COLOURS = ["#0b57d0", "#b3261e", "#137333", "#8430ce", "#9a4a00", "#00695c", "#ad1457", "#4a5568"];
let resultAudio = null; // object URL of the audio behind the result
let llmConfigured = false;
const jobAudio = new Map(); // job id -> object URL of the file uploaded from this tab

function t(key, ...args) {
  const s = (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
  return s.replace(/\{(\d)\}/g, (_, i) => String(args[Number(i)]));
}

function applyLanguage() {
  document.documentElement.lang = lang;
  $("ui-lang").value = lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-aria]").forEach((el) => { el.setAttribute("aria-label", t(el.dataset.i18nAria)); });
}

// --- API key and requests ----------------------------------------------------------------------------
function apiKey() { return sessionStorage.getItem("stt-api-key") || ""; }
function authHeaders() { const k = apiKey(); return k ? { Authorization: "Bearer " + k } : {}; }

function showNotice(message, kind) {
  const box = $("notice");
  box.textContent = message;
  box.className = "notice" + (kind === "info" ? " info" : "");
  box.hidden = !message;
}
function clearNotice() { showNotice(""); }

/** The API's own words for a failed response: its error message, plus "retry in N s" for 429/503. */
async function apiErrorMessage(response) {
  let message = "";
  try {
    const body = await response.json();
    message = (body && body.error && (body.error.message || body.error.code)) || (body && body.detail && JSON.stringify(body.detail)) || "";
  } catch (e) { /* not JSON */ }
  if (!message) message = response.status + " " + response.statusText;
  if (response.status === 401) return apiKey() ? t("keyWrong", message) : t("keyNeeded") + " (" + message + ")";
  if (response.status === 413) message = t("tooLarge") + " " + message;
  const retry = response.headers.get("Retry-After");
  if ((response.status === 429 || response.status === 503) && retry) message += " (" + t("retryIn", retry) + ")";
  return message;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, authHeaders());
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new Error(t("networkError", e.message));
  }
  if (!response.ok) {
    const error = new Error(await apiErrorMessage(response));
    error.status = response.status;
    if (response.status === 401) $("api-key").focus();
    throw error;
  }
  return response;
}

// --- tabs ----------------------------------------------------------------------------------------------
const tabs = () => Array.from(document.querySelectorAll("[role=tab]"));
function selectTab(id) {
  tabs().forEach((tab) => {
    const on = tab.id === id;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !on;
  });
  if (id === "tab-jobs") loadJobs();
  if (id === "tab-status") loadStatus();
}
function setupTabs() {
  tabs().forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab.id));
    tab.addEventListener("keydown", (e) => {
      const all = tabs();
      let j = null;
      if (e.key === "ArrowRight") j = (i + 1) % all.length;
      if (e.key === "ArrowLeft") j = (i - 1 + all.length) % all.length;
      if (e.key === "Home") j = 0;
      if (e.key === "End") j = all.length - 1;
      if (j !== null) { e.preventDefault(); selectTab(all[j].id); all[j].focus(); }
    });
  });
}

// --- upload -------------------------------------------------------------------------------------------
let chosenFile = null;
function chooseFile(file) {
  chosenFile = file;
  $("file-name").textContent = file ? file.name + " (" + (file.size / 1048576).toFixed(1) + " MB)" : "";
}

function mediaDuration(file) {
  return new Promise((resolve) => {
    const el = document.createElement("audio");
    const url = URL.createObjectURL(file);
    const finish = (d) => { URL.revokeObjectURL(url); resolve(d); };
    el.preload = "metadata";
    el.onloadedmetadata = () => finish(isFinite(el.duration) ? el.duration : null);
    el.onerror = () => finish(null);
    setTimeout(() => finish(null), 3000);
    el.src = url;
  });
}

function uploadForm(file, forJob) {
  const form = new FormData();
  form.append("file", file, file.name || "audio");
  const language = $("language").value;
  if (language) form.append("language", language);
  const hotwords = $("hotwords").value.trim();
  if (hotwords) form.append("hotwords", hotwords);
  if ($("speakers").checked) form.append("diarize", "true");
  if (forJob) {
    form.append("response_format", "verbose_json");
    if ($("words").checked) form.append("timestamp_granularities[]", "word");
    form.append("timestamp_granularities[]", "segment");
  } else {
    form.append("task", $("task").value);
    form.append("word_timestamps", $("words").checked ? "true" : "false");
    form.append("stream", "true");
  }
  return form;
}

async function startUpload(event) {
  if (event) event.preventDefault();
  clearNotice();
  if (!chosenFile) { showNotice(t("noFile")); $("choose").focus(); return; }
  const file = chosenFile;
  const button = $("start");
  button.disabled = true;
  $("upload-live").textContent = "";
  $("upload-progress").hidden = false;
  $("job-progress").hidden = true;
  $("upload-state").textContent = t("sending", file.name);
  try {
    const duration = await mediaDuration(file);
    const asJob = $("use-job").checked || (duration !== null && duration > JOB_THRESHOLD_S) ||
      (duration === null && file.size > 200 * 1048576);
    if (asJob && $("task").value === "translate") throw new Error(t("jobNoTranslate"));
    if (asJob) await runJob(file);
    else await runStream(file);
  } catch (e) {
    showNotice(e.message);
    $("upload-state").textContent = "";
  } finally {
    button.disabled = false;
  }
}

/** The sync route with stream=true: SSE deltas shown as they come, the done event carries the segments. */
async function runStream(file) {
  const started = performance.now();
  const response = await api("/transcribe", { method: "POST", body: uploadForm(file, false) });
  $("upload-state").textContent = t("decoding");
  const live = $("upload-live");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let final = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data || data === "[DONE]") continue;
      const ev = JSON.parse(data);
      if (ev.type === "transcript.text.delta") live.textContent += ev.delta;
      else if (ev.type === "transcript.text.done") final = ev;
      else if (ev.type === "error") throw new Error((ev.error && ev.error.message) || "error");
    }
  }
  if (!final) throw new Error("The stream ended without a result.");
  live.textContent = final.text;
  $("upload-state").textContent = t("done", ((performance.now() - started) / 1000).toFixed(1));
  showResult({ text: final.text, language: final.language, duration: final.duration, segments: final.segments || [], name: file.name },
    URL.createObjectURL(file));
}

async function runJob(file) {
  const response = await api("/v1/jobs", { method: "POST", body: uploadForm(file, true) });
  const job = await response.json();
  jobAudio.set(job.id, URL.createObjectURL(file));
  await followJob(job.id);
}

async function followJob(id) {
  const bar = $("job-progress");
  bar.hidden = false;
  $("upload-progress").hidden = false;
  for (;;) {
    const job = await (await api("/v1/jobs/" + encodeURIComponent(id))).json();
    const p = job.progress || {};
    bar.value = p.fraction || 0;
    bar.setAttribute("aria-valuetext", Math.round((p.fraction || 0) * 100) + "%");
    if (job.status === "queued") $("upload-state").textContent = t("jobQueued", id);
    else if (job.status === "processing") $("upload-state").textContent = t("jobRunning", id, (p.seconds_done || 0).toFixed(0), (p.seconds_total || 0).toFixed(0));
    else if (job.status === "completed") {
      bar.value = 1;
      $("upload-state").textContent = t("jobDone", id);
      $("upload-live").textContent = job.result.text;
      showResult(fromJob(job), jobAudio.get(id) || null);
      return;
    } else if (job.status === "failed") throw new Error(t("jobFailed", id, (job.error && (job.error.message || JSON.stringify(job.error))) || ""));
    else if (job.status === "cancelled") throw new Error(t("jobCancelled", id));
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function fromJob(job) {
  const r = job.result;
  return { text: r.text, language: r.language, duration: r.duration, name: job.filename || job.id,
    segments: (r.segments || []).map((s) => ({ start: s.start, end: s.end, text: s.text, words: s.words, speaker: s.speaker })) };
}

// --- result -------------------------------------------------------------------------------------------
function clock(seconds, sep) {
  const ms = Math.round(seconds * 1000);
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60, f = ms % 1000;
  const two = (n) => String(n).padStart(2, "0");
  return two(h) + ":" + two(m) + ":" + two(s) + sep + String(f).padStart(3, "0");
}

/** m:ss.s (h:mm:ss.s past an hour), for the segment list. */
function short(seconds) {
  const tenths = Math.round(seconds * 10);
  const h = Math.floor(tenths / 36000), m = Math.floor(tenths / 600) % 60, s = (tenths % 600) / 10;
  const ss = s.toFixed(1).padStart(4, "0");
  return h ? h + ":" + String(m).padStart(2, "0") + ":" + ss : m + ":" + ss;
}

function showResult(r, audioUrl) {
  result = r;
  resultAudio = audioUrl;
  $("result-empty").hidden = true;
  $("result").hidden = false;
  $("result-meta").textContent = (r.name ? r.name + " · " : "") + t("langDetected", r.language || "-", (r.duration || 0).toFixed(1));
  const player = $("player");
  if (audioUrl) { player.src = audioUrl; player.hidden = false; } else { player.removeAttribute("src"); player.hidden = true; }
  const list = $("segments");
  list.textContent = "";
  showSpeakers(r);
  r.segments.forEach((seg) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.start = seg.start;
    const ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = short(seg.start) + " – " + short(seg.end);
    const tx = document.createElement("span");
    tx.className = "seg-text";
    tx.textContent = seg.text.trim();
    b.append(ts);
    if (seg.speaker != null) b.append(speakerChip(seg.speaker));
    b.append(tx);
    b.addEventListener("click", () => playPart(seg.start, seg.end));
    li.append(b);
    list.append(li);
  });
  $("pp-out").hidden = true;
  $("pp-out").textContent = "";
  $("view-result").querySelector(".result-grid").classList.remove("with-pp");
  $("pp-actions").hidden = !llmConfigured;
  selectTab("tab-result");
}

// --- speakers: a colour and a name each; renaming updates the list and every download ----------------------
function speakerOrder(r) { return [...new Set(r.segments.map((s) => s.speaker).filter((x) => x != null))]; }
function speakerColour(label) {
  const i = speakerOrder(result).indexOf(label);
  return SPEAKER_COLOURS[(i < 0 ? 0 : i) % SPEAKER_COLOURS.length];
}
function speakerName(label) { return (result && result.names && result.names[label]) || label; }

function speakerChip(label) {
  const chip = document.createElement("span");
  chip.className = "speaker";
  chip.dataset.speaker = label;
  chip.style.setProperty("--speaker", speakerColour(label));
  chip.textContent = speakerName(label);
  return chip;
}

function showSpeakers(r) {
  const order = speakerOrder(r);
  r.names = r.names || {};
  const box = $("speaker-list");
  box.textContent = "";
  $("speaker-names").hidden = order.length === 0;
  order.forEach((label) => {
    const field = document.createElement("label");
    field.className = "speaker-field";
    field.style.setProperty("--speaker", speakerColour(label));
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    const input = document.createElement("input");
    input.type = "text";
    input.value = speakerName(label);
    input.dataset.speaker = label;
    input.setAttribute("aria-label", t("speakerLabel", label));
    input.addEventListener("input", () => {
      r.names[label] = input.value.trim() || label;
      document.querySelectorAll("#segments .speaker").forEach((chip) => {
        if (chip.dataset.speaker === label) chip.textContent = r.names[label];
      });
    });
    field.append(swatch, input);
    box.append(field);
  });
}

let stopAt = null;
function playPart(start, end) {
  const player = $("player");
  if (!player.src) return;
  const go = () => { player.currentTime = start; stopAt = end; player.play().catch(() => {}); };
  if (player.readyState >= 1) go(); else player.addEventListener("loadedmetadata", go, { once: true });
}

/** The downloads, as the server writes them: with speakers, `Name: ...` lines per turn (TXT), a `[Name]` prefix
 * (SRT), `<v Name>` voices (VTT) and the names in the segments (JSON); the names are the ones given above. */
function rendered(fmt) {
  const segs = result.segments;
  const named = speakerOrder(result).length > 0;
  const who = (s) => (s.speaker != null ? speakerName(s.speaker) : null);
  if (fmt === "txt") {
    if (!named) return result.text.trim() + "\n";
    const turns = [];
    segs.forEach((s) => {
      const last = turns[turns.length - 1];
      if (last && last[0] === who(s)) last[1].push(s.text.trim()); else turns.push([who(s), [s.text.trim()]]);
    });
    return turns.map(([name, parts]) => name + ": " + parts.join(" ") + "\n").join("");
  }
  if (fmt === "json") {
    const out = Object.assign({}, result, { segments: segs.map((s) => (s.speaker != null ? Object.assign({}, s, { speaker: who(s) }) : s)) });
    delete out.names;
    if (named) out.speakers = speakerOrder(result).map(speakerName);
    return JSON.stringify(out, null, 2);
  }
  if (fmt === "srt") return segs.map((s, i) => (i + 1) + "\n" + clock(s.start, ",") + " --> " + clock(s.end, ",") + "\n" + (who(s) != null ? "[" + who(s) + "] " : "") + s.text.trim() + "\n").join("\n");
  return "WEBVTT\n\n" + segs.map((s) => clock(s.start, ".") + " --> " + clock(s.end, ".") + "\n" + (who(s) != null ? "<v " + who(s) + ">" : "") + s.text.trim() + "\n").join("\n");
}

function download(fmt) {
  if (!result) return;
  const types = { txt: "text/plain", srt: "application/x-subrip", vtt: "text/vtt", json: "application/json" };
  const blob = new Blob([rendered(fmt)], { type: types[fmt] + ";charset=utf-8" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = (result.name || "transcript").replace(/\.[^.]+$/, "") + "." + fmt;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function copyText() {
  if (!result) return;
  try { await navigator.clipboard.writeText(result.text); } catch (e) {
    const area = document.createElement("textarea");
    area.value = result.text; document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  showNotice(t("copied"), "info");
}

async function postprocess(task) {
  if (!result) return;
  const out = $("pp-out");
  out.hidden = false;
  $("view-result").querySelector(".result-grid").classList.add("with-pp");
  out.textContent = t("ppRunning");
  try {
    const response = await api("/v1/postprocess", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: result.text, task, language: result.language || undefined }) });
    const body = await response.json();
    out.textContent = body.text || (body.error && body.error.message) || "";
  } catch (e) { out.textContent = e.message; }
}

// --- jobs ---------------------------------------------------------------------------------------------
async function loadJobs() {
  const body = $("jobs-body");
  try {
    const jobs = (await (await api("/v1/jobs?limit=20")).json()).data;
    body.textContent = "";
    $("jobs-empty").hidden = jobs.length > 0;
    jobs.forEach((job) => {
      const tr = document.createElement("tr");
      const cell = (text) => { const td = document.createElement("td"); td.textContent = text; tr.append(td); return td; };
      cell(job.filename || job.id);
      cell(job.status);
      const prog = document.createElement("progress");
      prog.max = 1; prog.value = (job.progress && job.progress.fraction) || 0;
      prog.setAttribute("aria-label", t("colProgress") + " " + (job.filename || job.id));
      cell("").append(prog);
      cell(new Date(job.created_at * 1000).toLocaleString(lang));
      const actions = cell("");
      const button = (label, fn) => { const b = document.createElement("button"); b.type = "button"; b.textContent = label; b.addEventListener("click", fn); actions.append(b, " "); };
      if (job.status === "completed") button(t("open"), () => openJob(job.id));
      if (job.status === "queued" || job.status === "processing") {
        button(t("open"), () => { selectTab("tab-upload"); followJob(job.id).catch((e) => showNotice(e.message)); });
        button(t("cancel"), () => cancelJob(job.id));
      } else button(t("remove"), () => cancelJob(job.id));
      body.append(tr);
    });
  } catch (e) { showNotice(e.message); }
}

async function openJob(id) {
  try {
    const job = await (await api("/v1/jobs/" + encodeURIComponent(id))).json();
    showResult(fromJob(job), jobAudio.get(id) || null);
  } catch (e) { showNotice(e.message); }
}

async function cancelJob(id) {
  try { await api("/v1/jobs/" + encodeURIComponent(id), { method: "DELETE" }); } catch (e) { showNotice(e.message); }
  loadJobs();
}

// --- status -------------------------------------------------------------------------------------------
async function loadStatus() {
  const list = $("status-list");
  let health;
  try {
    const response = await fetch("/health", { headers: authHeaders() });
    health = await response.json();
  } catch (e) { showNotice(t("networkError", e.message)); return; }
  llmConfigured = Boolean(health.llm && health.llm.configured !== false);
  if (result) $("pp-actions").hidden = !llmConfigured;
  const rows = [[t("stStatus"), health.status]];
  if (health.model) rows.push([t("stModel"), health.model]);
  if (health.device) rows.push([t("stDevice"), health.device]);
  if (health.compute_type) rows.push([t("stCompute"), health.compute_type]);
  if (health.queue) {
    rows.push([t("stQueue"), t("stQueueValue", health.queue.requests, health.queue.audio_seconds)]);
    rows.push([t("stWorkers"), health.queue.workers_alive + " / " + health.queue.workers_expected]);
  }
  if (health.model) {
    const llm = health.llm;
    rows.push([t("stLLM"), !llm ? t("stLLMNone") : (llm.reachable || llm.ok) ? t("stLLMOk", llm.model || "") : t("stLLMBad")]);
  }
  list.textContent = "";
  rows.forEach(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    list.append(dt, dd);
  });
}

/** At load: does this server want a key, and is the one we hold accepted? */
async function checkAccess() {
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.status === 401) showNotice(await apiErrorMessage(response));
    else clearNotice();
  } catch (e) { showNotice(t("networkError", e.message)); }
  loadStatus();
}

// --- record -------------------------------------------------------------------------------------------
const REC_RATE = 24000;
let rec = null; // {ws, context, stream, node, chunks:[Int16Array], items: Map}

function micAvailable() { return Boolean(window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia); }

function base64(int16) {
  const bytes = new Uint8Array(int16.buffer, int16.byteOffset, int16.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function recItem(id) {
  let el = rec.items.get(id);
  if (!el) {
    el = document.createElement("p");
    el.className = "partial";
    el.dataset.item = id;
    rec.items.set(id, el);
    $("rec-live").append(el);
  }
  return el;
}

function onRealtimeEvent(ev) {
  switch (ev.type) {
    case "input_audio_buffer.speech_started": $("rec-state").textContent = t("speech"); recItem(ev.item_id); break;
    case "input_audio_buffer.speech_stopped": $("rec-state").textContent = t("listening"); break;
    case "conversation.item.input_audio_transcription.delta": recItem(ev.item_id).textContent += ev.delta; break;
    case "conversation.item.input_audio_transcription.completed": {
      const el = recItem(ev.item_id);
      el.textContent = ev.transcript;
      el.className = "final";
      if (!ev.transcript.trim()) el.remove();
      break;
    }
    case "conversation.item.input_audio_transcription.failed":
    case "error": showNotice((ev.error && ev.error.message) || ev.type); break;
    default: break;
  }
}

async function startRecording() {
  clearNotice();
  if (!micAvailable()) { $("mic-unavailable").hidden = false; return; }
  $("rec-start").disabled = true;
  $("rec-after").hidden = true;
  $("rec-live").textContent = "";
  $("rec-state").textContent = t("connecting");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  } catch (e) {
    showNotice(t("micDenied", e.message));
    $("rec-start").disabled = false;
    $("rec-state").textContent = "";
    return;
  }
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const protocols = ["realtime"];
  if (apiKey()) protocols.push("openai-insecure-api-key." + apiKey());
  const ws = new WebSocket(scheme + location.host + "/v1/realtime?intent=transcription", protocols);
  const context = new AudioContext({ sampleRate: REC_RATE });
  rec = { ws, context, stream, node: null, chunks: [], items: new Map(), open: false };
  ws.onmessage = (m) => { try { onRealtimeEvent(JSON.parse(m.data)); } catch (e) { /* not JSON */ } };
  ws.onclose = (e) => {
    if (rec && rec.ws === ws && !rec.stopping) {
      // closed before it opened: no /v1/realtime here (an older server), or the key was refused
      showNotice(rec.opened ? t("wsClosed", e.reason || e.code) : t("liveUnavailable", e.reason || e.code));
      stopRecording();
    }
  };
  ws.onopen = async () => {
    rec.opened = true;
    const language = $("rec-language").value;
    ws.send(JSON.stringify({ type: "session.update", session: { type: "transcription", audio: { input: {
      format: { type: "audio/pcm", rate: REC_RATE },
      transcription: Object.assign({ model: "whisper-1" }, language ? { language } : {}),
      turn_detection: { type: "server_vad" } } } } }));
    await context.audioWorklet.addModule("/web/pcm-worklet.js");
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "pcm16-capture");
    node.port.onmessage = (m) => {
      const pcm = new Int16Array(m.data);
      rec.chunks.push(pcm);
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(pcm) }));
    };
    source.connect(node);
    node.connect(context.destination); // a node nothing pulls is not run; the worklet writes silence to it
    await context.resume();
    rec.node = node;
    rec.source = source;
    $("rec-stop").disabled = false;
    $("rec-state").textContent = t("listening");
  };
}

function wav(chunks, rate) {
  const samples = chunks.reduce((n, c) => n + c.length, 0);
  const buffer = new ArrayBuffer(44 + samples * 2);
  const v = new DataView(buffer);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples * 2, true); str(8, "WAVE"); str(12, "fmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true);
  v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, "data");
  v.setUint32(40, samples * 2, true);
  let o = 44;
  chunks.forEach((c) => { new Int16Array(buffer, o, c.length).set(c); o += c.length * 2; });
  return new Blob([buffer], { type: "audio/wav" });
}

async function stopRecording() {
  if (!rec) return;
  const r = rec;
  r.stopping = true;
  $("rec-stop").disabled = true;
  if (r.source) r.source.disconnect();
  r.stream.getTracks().forEach((track) => track.stop());
  if (r.ws.readyState === WebSocket.OPEN) {
    try { r.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" })); } catch (e) { /* closing */ }
    // let the last turn's final arrive before closing
    await new Promise((resolve) => setTimeout(resolve, 4000));
    r.ws.close(1000);
  }
  r.context.close().catch(() => {});
  rec = null;
  $("rec-start").disabled = false;
  $("rec-state").textContent = t("stopped");
  if (r.chunks.length) {
    const blob = wav(r.chunks, REC_RATE);
    const url = URL.createObjectURL(blob);
    $("rec-audio").src = url;
    $("rec-download").href = url;
    $("rec-after").hidden = false;
    $("rec-again").onclick = () => {
      const stamp = new Date().toISOString().replace(/[:.]/g, "-");
      chooseFile(new File([blob], "recording-" + stamp + ".wav", { type: "audio/wav" }));
      selectTab("tab-upload");
      startUpload();
    };
  }
}

// --- wiring -------------------------------------------------------------------------------------------
function init() {
  applyLanguage();
  setupTabs();
  $("api-key").value = apiKey();
  $("ui-lang").addEventListener("change", (e) => {
    lang = e.target.value; localStorage.setItem("stt-ui-lang", lang); applyLanguage(); loadStatus();
  });
  const saveKey = () => {
    const k = $("api-key").value.trim();
    if (k) sessionStorage.setItem("stt-api-key", k); else sessionStorage.removeItem("stt-api-key");
    checkAccess();
  };
  $("key-save").addEventListener("click", saveKey);
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") saveKey(); });
  $("choose").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0] || null));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
  });
  $("upload-form").addEventListener("submit", startUpload);
  $("copy").addEventListener("click", copyText);
  document.querySelectorAll("[data-download]").forEach((b) => b.addEventListener("click", () => download(b.dataset.download)));
  document.querySelectorAll("[data-pp]").forEach((b) => b.addEventListener("click", () => postprocess(b.dataset.pp)));
  $("player").addEventListener("timeupdate", () => {
    const p = $("player");
    if (stopAt !== null && p.currentTime >= stopAt) { p.pause(); stopAt = null; }
  });
  $("jobs-refresh").addEventListener("click", loadJobs);
  $("status-refresh").addEventListener("click", loadStatus);
  $("rec-start").addEventListener("click", startRecording);
  $("rec-stop").addEventListener("click", stopRecording);
  if (!micAvailable()) { $("mic-unavailable").hidden = false; $("rec-start").disabled = true; }
  checkAccess();
}

document.addEventListener("DOMContentLoaded", init);

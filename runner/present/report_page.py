"""The fixed parts of ``report.html``: its style sheet and its script.

The script renders the gallery from the job data that :mod:`runner.report` embeds as JSON
(``<script type="application/json" id="report-data">``), one page of rows at a time, so a
page of tens of thousands of jobs opens as fast as one of twenty. Everything it shows is
escaped by ``esc`` before it reaches ``innerHTML``.

The page's state lives in the URL's fragment (``#state=failed&code=X&q=teapot&page=2``,
``&job=ID&img=0`` for the lightbox), so every link (a stat card, a failure code, a job)
is a plain ``href``, the back button undoes a filter, and a view can be bookmarked.

Hooks for tests: ``<body data-ready="1">`` once the first render is done (with
``data-open-ms``, from the start of navigation), ``data-render-ms`` and ``data-shown``
(jobs on this page) after every render.

Data rows (``D.J``): ``[id, group, state, prompt, meta, input, files, fail code, message,
uncertain, submitted at, completion s, task, id derived (0/1), on disk at]``; ``prompt``,
``meta``, ``input`` and ``message`` index the tables ``D.P``, ``D.M``, ``D.X``, ``D.E``
(one copy of what variants share); ``files`` are ``[path, thumbnail or null, bytes, on disk]``.
"""

from __future__ import annotations

__all__ = ["CSS", "SCRIPT"]

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1d1d1f;background:#f6f6f4}
header,main,footer{max-width:1280px;margin:0 auto;padding:0 16px}
header{padding-top:16px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:18px;margin:24px 0 10px}
h3{font-size:15px;margin:0 0 6px;word-break:break-word}
a{color:#0b57d0}
.muted{color:#6e6e73}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
a.stat{display:block;background:#fff;border:1px solid #e2e2e0;border-radius:8px;
 padding:6px 12px;color:inherit;text-decoration:none;min-width:84px}
a.stat:hover{border-color:#0b57d0}
a.stat b{display:block;font-size:20px}
a.stat.bad{border-color:#e8a29b;background:#fff5f4}a.stat.bad b{color:#b3261e}
.problems{background:#fff;border:1px solid #e8a29b;border-radius:8px;padding:10px 14px}
.problems h2{margin:0 0 8px;color:#b3261e}
.problems table{border-collapse:collapse;width:100%;font-size:13px}
.problems td,.problems th{border-top:1px solid #eee;padding:6px 8px;text-align:left;
 vertical-align:top}
.problems td.ids a{margin-right:6px;white-space:nowrap}
.ok{background:#fff;border:1px solid #bfe3c6;border-radius:8px;padding:8px 14px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e2e2e0;border-radius:8px;padding:8px}
figcaption{font-weight:600;margin-bottom:4px}
svg.chart{width:100%;height:auto;display:block}
svg .tick{font-size:var(--tick);fill:#444}svg .axis{font-size:var(--axis);fill:#222}
svg.narrow{display:none}
.toolbar{position:sticky;top:0;z-index:5;background:#f6f6f4ee;padding:8px 0;display:flex;
 flex-wrap:wrap;gap:6px;align-items:center;border-bottom:1px solid #e2e2e0}
.toolbar input,.toolbar select{font:inherit;padding:5px 6px;border:1px solid #c9c9c6;
 border-radius:6px;background:#fff;max-width:100%}
.toolbar input{flex:1 1 220px}
.pager{display:flex;gap:8px;align-items:center;margin:10px 0;flex-wrap:wrap}
.pager button{font:inherit;padding:4px 12px;border:1px solid #c9c9c6;border-radius:6px;
 background:#fff;cursor:pointer}
.pager button:disabled{opacity:.4;cursor:default}
.row{background:#fff;border:1px solid #e2e2e0;border-radius:8px;padding:10px 12px;
 margin-bottom:10px}
.rowhead{margin-bottom:8px}
.rowhead{overflow-wrap:anywhere}
.rowhead b{margin-right:8px}
.chip{display:inline-block;background:#eef3fb;border-radius:10px;padding:0 8px;
 font-size:12px;margin:2px 4px 0 0}
.variants{display:flex;flex-wrap:wrap;gap:12px 18px}
.cell{margin:0;padding:0;border:0;background:none;max-width:100%}
.cell .shots{display:flex;flex-wrap:wrap;gap:4px}
.cell.multi{background:#f1f1ee;border-radius:6px;padding:4px}
.cell figcaption{font-weight:400;font-size:12px;color:#555;margin-top:3px;max-width:330px;
 overflow-wrap:anywhere}
a.shot{display:block;line-height:0;text-decoration:none}
a.shot img{object-fit:contain;background:#ececea;border-radius:4px}
img.broken{outline:3px solid #d93025}
.ph{display:flex;flex-direction:column;justify-content:center;align-items:center;
 text-align:center;border-radius:4px;padding:8px;font-size:12px;
 color:#444;background:repeating-linear-gradient(45deg,#f1f1ef,#f1f1ef 8px,#e9e9e6 8px,
 #e9e9e6 16px);overflow:hidden;text-decoration:none;line-height:1.35;gap:2px}
.ph b,.ph span{display:block;max-width:100%;overflow-wrap:anywhere}
.ph b{font-size:12px}
.ph.failed,.ph.lost,.ph.missing{background:#fdecea;color:#8c1d18}
.badge{display:inline-block;border-radius:4px;padding:0 5px;font-size:11px;
 font-weight:600;text-transform:uppercase;letter-spacing:.02em;background:#eee;color:#333}
.badge.failed,.badge.lost{background:#fdecea;color:#b3261e}
.badge.done{background:#e6f4ea;color:#137333}
.badge.live,.badge.downloading{background:#e8f0fe;color:#174ea6}
.note{background:#fff8e1;border:1px solid #f0d98c;border-radius:6px;padding:6px 10px}
footer{margin:30px auto;color:#6e6e73;font-size:12px}
body.lb-open{overflow:hidden}
.lb{position:fixed;inset:0;z-index:10;background:#111d;display:flex;align-items:center;
 justify-content:center;padding:12px}
.lb[hidden]{display:none}
.lb-box{background:#fff;border-radius:8px;max-width:1400px;width:100%;
 height:calc(100vh - 24px);display:grid;grid-template-columns:minmax(0,1fr) 340px;
 overflow:hidden;position:relative}
.lb-img{background:#222;display:flex;align-items:center;justify-content:center;
 min-height:200px}
.lb-img img{width:100%;height:100%;object-fit:contain;display:block}
.lb-img .ph{width:auto;min-width:240px;min-height:200px}
.lb-info{padding:14px;overflow:auto;max-height:calc(100vh - 24px);font-size:13px;
 overflow-wrap:anywhere;min-width:0}
.lb-info dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:8px 0}
.lb-info dt{color:#6e6e73}.lb-info dd{margin:0;overflow-wrap:anywhere;min-width:0}
.lb-nav{display:flex;gap:6px;margin-bottom:8px}
.lb-nav button{font:inherit;padding:3px 10px;border:1px solid #c9c9c6;border-radius:6px;
 background:#fff;cursor:pointer}
@media (max-width:700px){
 svg.wide{display:none}svg.narrow{display:block}
 .toolbar select{flex:1 1 40%}
 .lb{padding:0}
 .lb-box{grid-template-columns:1fr;grid-template-rows:auto auto;border-radius:0;
  height:100%;overflow:auto}
 .lb-img img{height:auto;max-height:70vh}.lb-info{max-height:none}
 .problems tr{display:grid;grid-template-columns:1fr;border-top:1px solid #eee}
 .problems th{display:none}.problems td{border:0;padding:2px 4px}
}
"""

SCRIPT = r"""
(function () {
'use strict';
const start = performance.now();
const D = JSON.parse(document.getElementById('report-data').textContent);
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g,
  (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const href = (p) => p.split('/').map(encodeURIComponent).join('/');
const text = (v) => (typeof v === 'string' ? v : JSON.stringify(v));
const jobs = D.J.map((r, n) => ({
  n, id: r[0], g: r[1], s: r[2], p: D.P[r[3]], m: D.M[r[4]], x: D.X[r[5]], f: r[6],
  c: r[7], e: r[8] == null ? '' : D.E[r[8]], u: r[9], t: r[10], d: r[11], k: r[12],
  a: r[13], dt: r[14],
}));
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? '' : 's'}`;
const byId = new Map(jobs.map((j) => [j.id, j]));
const groups = new Map();
for (const j of jobs) {
  if (!groups.has(j.g)) groups.set(j.g, []);
  groups.get(j.g).push(j);
}
const res = (j) => String(j.x.resolution == null ? '2K' : j.x.resolution);
const ar = (j) => String(j.x.aspect_ratio == null ? 'unset' : j.x.aspect_ratio);
// thumbnails fit a square of SIDE pixels: three variants side by side on a phone too
const SIDE = matchMedia('(max-width: 700px)').matches ? 112 : 160;
const box = (j) => {  // the thumbnail's box, from the aspect ratio: a stable layout
  const m = /^(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(ar(j));
  const r = m && +m[1] > 0 && +m[2] > 0 ? Math.max(0.1, Math.min(10, m[1] / m[2])) : 1;
  const side = (x) => Math.max(24, Math.round(x));
  return r >= 1 ? [SIDE, side(SIDE / r)] : [side(SIDE * r), SIDE];
};

// Per group: its label and the input fields its variants vary. The label is the entry's
// id: a matrix variant's id is that id, a dot, then its suffixes, so the label is the
// longest run of whole dot-separated parts the variants share. An entry without an id
// (its jobs' ids are derived from their content) is named by the start of its prompt.
const groupInfo = new Map();
const promptLabel = (p) => {
  const t = p.replace(/\s+/g, ' ').trim();
  return t.length > 80 ? t.slice(0, 79) + '…' : t;
};
for (const [g, members] of groups) {
  let stem = members[0].id;
  for (const m of members) {
    const parts = stem.split('.');
    const other = m.id.split('.');
    let i = 0;
    while (i < parts.length && i < other.length && parts[i] === other[i]) i++;
    stem = parts.slice(0, i).join('.');
  }
  if (members[0].a) stem = promptLabel(members[0].p) || members[0].id;
  const keys = new Set();
  for (const m of members) for (const k in m.x) keys.add(k);
  const varies = [...keys].filter((k) => k !== 'prompt' &&
    new Set(members.map((m) => JSON.stringify(m.x[k]))).size > 1);
  const samePrompt = new Set(members.map((m) => m.p)).size === 1;
  groupInfo.set(g, {label: stem || members[0].id, varies, samePrompt});
}

// -- the URL fragment holds the view ---------------------------------------------------
const VIEW = ['state', 'code', 'res', 'ar', 'mk', 'mv', 'q', 'sort', 'per', 'page'];
function parse() {
  const o = Object.create(null);  // a key such as __proto__ stays a plain key
  new URLSearchParams(location.hash.slice(1)).forEach((v, k) => { o[k] = v; });
  return o;
}
function fragment(o) {
  const p = new URLSearchParams();
  for (const k of [...VIEW, 'job', 'img']) if (o[k] != null && o[k] !== '') p.set(k, o[k]);
  return '#' + p.toString();
}
function go(changes, replace) {
  const o = Object.assign(parse(), changes);
  if (!('page' in changes) && Object.keys(changes).some((k) => VIEW.includes(k))) {
    delete o.page;
  }
  const f = fragment(o);
  if (replace) location.replace(f); else location.hash = f;
}

// -- filters ---------------------------------------------------------------------------
function words(o) { return (o.q || '').toLowerCase().split(/\s+/).filter(Boolean); }
function matches(j, o, q) {
  if (o.state && (o.state === 'uncertain' ? !j.u : j.s !== o.state)) return false;
  if (o.code && j.c !== o.code) return false;
  if (o.res && res(j) !== o.res) return false;
  if (o.ar && ar(j) !== o.ar) return false;
  if (o.mk) {
    if (!has(j.m, o.mk)) return false;
    if (o.mv && text(j.m[o.mk]) !== o.mv) return false;
  }
  if (q.length) {
    if (j.q === undefined) {
      j.q = [j.id, j.p, ...Object.values(j.m).map(text)].join('\n').toLowerCase();
    }
    for (const w of q) if (!j.q.includes(w)) return false;
  }
  return true;
}
const SORTS = {
  '': ['manifest order', (a, b) => a.n - b.n],
  'new': ['newest first', (a, b) => (b.t || 0) - (a.t || 0) || a.n - b.n],
  'old': ['oldest first', (a, b) => (a.t || Infinity) - (b.t || Infinity) || a.n - b.n],
  'slow': ['slowest first', (a, b) => (b.d || 0) - (a.d || 0) || a.n - b.n],
};
function counted(values) {
  const c = new Map();
  for (const v of values) c.set(v, (c.get(v) || 0) + 1);
  return c;
}
function options(sel, all, entries, value, extra) {
  const opts = [`<option value="">${esc(all)}</option>`];
  for (const [v, n] of entries) {
    opts.push(`<option value="${esc(v)}">${esc(v)} (${n.toLocaleString()})</option>`);
  }
  if (value && !entries.some(([v]) => v === value)) {
    opts.push(`<option value="${esc(value)}">${esc(value)}</option>`);
  }
  if (extra) opts.push(`<option disabled>${esc(extra)}</option>`);
  sel.innerHTML = opts.join('');
  sel.value = value || '';
  sel.hidden = entries.length === 0;
}
const byCount = (m) => [...m].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(b[0]));
const STATES = ['done', 'failed', 'lost', 'pending', 'live', 'downloading'];
const stateCounts = counted(jobs.map((j) => j.s));
const stateEntries = STATES.filter((s) => stateCounts.get(s)).map((s) => [s, stateCounts.get(s)]);
const uncertain = jobs.filter((j) => j.u).length;
if (uncertain) stateEntries.push(['uncertain', uncertain]);
const codeEntries = byCount(counted(jobs.filter((j) => j.c).map((j) => j.c)));
const resEntries = byCount(counted(jobs.map(res)));
const arEntries = byCount(counted(jobs.map(ar)));
const metaKeys = byCount(counted(jobs.flatMap((j) => Object.keys(j.m))));
const metaKeySet = new Set(metaKeys.map(([k]) => k));
//: meta values listed in the value filter (the most frequent); the rest are found by search
const VALUES_SHOWN = 500;
// A bookmarked view may name a meta key no job has any more: ignore it (and its value),
// rather than filter every job out.
function clean(o) {
  if (o.mk && !metaKeySet.has(o.mk)) { delete o.mk; delete o.mv; }
  if (o.sort && !has(SORTS, o.sort)) delete o.sort;
  return o;
}

function controls(o) {
  options($('f-state'), 'every state', stateEntries, o.state);
  options($('f-code'), 'every failure code', codeEntries, o.code);
  options($('f-res'), 'every resolution', resEntries, o.res);
  options($('f-ar'), 'every aspect ratio', arEntries, o.ar);
  options($('f-mk'), 'any meta key', metaKeys, o.mk);
  const all = o.mk ? byCount(counted(jobs.filter((j) => has(j.m, o.mk))
    .map((j) => text(j.m[o.mk])))) : [];
  const values = all.slice(0, VALUES_SHOWN);
  const capped = all.length > values.length;
  const of = `${values.length.toLocaleString()} of ${all.length.toLocaleString()} values`;
  options($('f-mv'), capped ? `any value (${of} listed, the most frequent)` : 'any value',
    values, o.mv, capped ? `${of} shown; search finds the others` : '');
  $('f-mv').title = capped ? `${of} shown (the most frequent); search finds the others` : '';
  $('f-sort').value = o.sort || '';
  $('f-per').value = String(perPage(o));
  if (document.activeElement !== $('q')) $('q').value = o.q || '';
}
function perPage(o) { return Math.max(1, Math.min(1000, parseInt(o.per, 10) || 50)); }

// -- the gallery -----------------------------------------------------------------------
let sequence = [];  // [job, image] in the order shown, for the lightbox's prev and next
function link(o, j, i) { return fragment(Object.assign({}, o, {job: j.id, img: i})); }
function placeholder(j, cls, title, body) {
  const [w, h] = box(j);
  return `<span class="ph ${cls}" style="width:${w}px;height:${h}px">` +
    `<b>${esc(title)}</b>${body ? `<span>${esc(body.slice(0, 140))}</span>` : ''}</span>`;
}
function cell(o, j, info) {
  const [w, h] = box(j);
  const shots = [];
  if (j.s === 'done' && j.f.length) {
    j.f.forEach((f, i) => {
      const inner = f[3]
        ? `<img loading="lazy" src="${esc(href(f[1] || f[0]))}" width="${w}" height="${h}" ` +
          `alt="${esc(j.id)} image ${i}" data-full="${esc(href(f[0]))}">`
        : placeholder(j, 'missing', 'missing', f[0]);
      shots.push(`<a class="shot" href="${esc(link(o, j, i))}">${inner}</a>`);
    });
  } else {
    const title = j.c || j.s;
    shots.push(`<a class="shot" href="${esc(link(o, j, 0))}">` +
      placeholder(j, j.s, title, j.e || (j.s === 'done' ? 'no image recorded' : '')) + '</a>');
  }
  const caption = info.varies.length ? info.varies.map((k) => text(j.x[k])).join(' · ')
    : [res(j), j.x.aspect_ratio].filter((v) => v != null).join(' · ');
  const badge = j.s === 'done' ? '' : `<span class="badge ${esc(j.s)}">${esc(j.s)}</span> `;
  const took = j.d != null ? ` · ${j.d.toFixed(1)} s` : '';
  const unc = j.u ? ` · <span class="badge">uncertain ×${j.u}</span>` : '';
  const prompt = info.samePrompt ? '' : `<br>${esc(j.p.slice(0, 160))}`;
  const multi = j.s === 'done' && j.f.length > 1 ? ' multi' : '';
  return `<figure class="cell${multi}" data-job="${esc(j.id)}" data-state="${esc(j.s)}">` +
    `<div class="shots">${shots.join('')}</div><figcaption>${badge}${esc(caption)}${took}` +
    `${unc}${prompt}</figcaption></figure>`;
}
function row(o, r) {
  const info = groupInfo.get(r.g);
  const first = r.jobs[0];
  const chips = Object.entries(first.m).map(([k, v]) =>
    `<span class="chip">${esc(k)}: ${esc(text(v))}</span>`).join('');
  const total = groups.get(r.g).length;
  const count = total > 1 ? ` <span class="muted">${r.jobs.length} of ${total} variants` +
    '</span>' : '';
  const prompt = info.samePrompt ? `<div class="prompt">${esc(first.p)}</div>` : '';
  return `<section class="row" data-group="${r.g}"><div class="rowhead">` +
    `<b>${esc(info.label)}</b>${count}${prompt}${chips}</div><div class="variants">` +
    r.jobs.map((j) => cell(o, j, info)).join('') + '</div></section>';
}
function render(o) {
  const t0 = performance.now();
  const q = words(o);
  const list = jobs.filter((j) => matches(j, o, q));
  list.sort((SORTS[o.sort] || SORTS['']) [1]);
  const rows = [];
  const at = new Map();
  for (const j of list) {
    let r = at.get(j.g);
    if (!r) { r = {g: j.g, jobs: []}; at.set(j.g, r); rows.push(r); }
    r.jobs.push(j);
  }
  for (const r of rows) r.jobs.sort((a, b) => a.n - b.n);
  sequence = [];
  for (const r of rows) {
    for (const j of r.jobs) {
      const n = j.s === 'done' && j.f.length ? j.f.length : 1;
      for (let i = 0; i < n; i++) sequence.push([j, i]);
    }
  }
  const per = perPage(o);
  const pages = Math.max(1, Math.ceil(rows.length / per));
  const page = Math.max(1, Math.min(pages, parseInt(o.page, 10) || 1));
  const shown = rows.slice((page - 1) * per, page * per);
  $('gallery').innerHTML = shown.map((r) => row(o, r)).join('') ||
    '<p class="muted">No job matches these filters.</p>';
  const what = `${list.length.toLocaleString()} of ${plural(jobs.length, 'job')}, ` +
    plural(rows.length, 'row');
  for (const p of document.querySelectorAll('.pager')) {
    p.querySelector('.where').textContent = `page ${page} of ${pages} · ${what}`;
    p.querySelector('.prev').disabled = page <= 1;
    p.querySelector('.next').disabled = page >= pages;
    p.dataset.page = page;
    p.dataset.pages = pages;
  }
  controls(o);
  document.body.dataset.shown = shown.reduce((n, r) => n + r.jobs.length, 0);
  document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
}

// -- the lightbox ----------------------------------------------------------------------
function lightbox(o) {
  const lb = $('lightbox');
  const j = o.job ? byId.get(o.job) : undefined;
  if (!j) {
    lb.hidden = true;
    document.body.classList.remove('lb-open');
    return;
  }
  const i = Math.max(0, Math.min(j.f.length - 1, parseInt(o.img, 10) || 0));
  const f = j.s === 'done' ? j.f[i] : undefined;
  $('lb-img').innerHTML = f && f[3]
    ? `<img id="lb-full" src="${esc(href(f[0]))}" alt="${esc(j.id)} image ${i}">`
    : placeholder(j, j.s, f ? 'missing' : (j.c || j.s), f ? f[0] : j.e);
  const rows = [['state', j.s + (j.u ? ` (${j.u} uncertain submission(s))` : '')]];
  if (j.c) rows.push(['failure', `${j.c}: ${j.e}`]);
  for (const k in j.x) rows.push([k, text(j.x[k])]);
  for (const k in j.m) rows.push([`meta.${k}`, text(j.m[k])]);
  if (j.k) rows.push(['task', j.k]);
  if (j.d != null) rows.push(['completed in', `${j.d.toFixed(2)} s`]);
  if (j.t) rows.push(['submitted', new Date(j.t * 1000).toLocaleString()]);
  if (j.dt) rows.push(['on disk', new Date(j.dt * 1000).toLocaleString()]);
  if (f) {
    rows.push(['file', f[0]]);
    if (f[2] != null) rows.push(['bytes', Number(f[2]).toLocaleString()]);
  }
  const at = sequence.findIndex(([s, k]) => s === j && k === i);
  $('lb-where').textContent = at >= 0 ? `${at + 1} of ${sequence.length}` : '';
  $('lb-prev').disabled = at <= 0;
  $('lb-next').disabled = at < 0 || at >= sequence.length - 1;
  $('lb-text').innerHTML = `<h3>${esc(j.id)}` +
    `${j.f.length > 1 ? ` · image ${i + 1} of ${j.f.length}` : ''}</h3>` +
    `<p class="prompt">${esc(j.p)}</p>` +
    (f && f[3] ? `<p><a href="${esc(href(f[0]))}">open the file</a></p>` : '') +
    '<dl>' + rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join('') + '</dl>';
  lb.hidden = false;
  document.body.classList.add('lb-open');
}
function step(by) {
  const o = parse();
  const j = byId.get(o.job);
  const at = sequence.findIndex(([s, k]) => s === j && k === (parseInt(o.img, 10) || 0));
  const next = sequence[at + by];
  if (at >= 0 && next) go({job: next[0].id, img: next[1]}, true);
}
const close = () => go({job: '', img: ''});

// -- wiring ----------------------------------------------------------------------------
let shownView = null;
// A new page or new results start at their top: the gallery's title at the top of the
// window, when the window was scrolled below it (after the render, which changes the
// page's height; the toolbar is sticky, so scrolling it into view would do nothing).
function toTop() {
  const title = $('gallery-title');
  const top = title.getBoundingClientRect().top + window.scrollY;
  if (window.scrollY > top) window.scrollTo(0, top);
}
function route() {
  const o = clean(parse());
  const view = VIEW.map((k) => o[k] || '').join('\u0000');
  if (view !== shownView) {
    const first = shownView === null;
    shownView = view;
    render(o);
    if (!first) toTop();
  }
  lightbox(o);
}
for (const [id, key] of [['f-state', 'state'], ['f-code', 'code'], ['f-res', 'res'],
  ['f-ar', 'ar'], ['f-mk', 'mk'], ['f-mv', 'mv'], ['f-sort', 'sort'], ['f-per', 'per']]) {
  $(id).addEventListener('change', (ev) => {
    const change = {[key]: ev.target.value};
    if (key === 'mk') change.mv = '';
    go(change);
  });
}
let typing = 0;
$('q').addEventListener('input', (ev) => {
  clearTimeout(typing);
  typing = setTimeout(() => go({q: ev.target.value.trim()}, true), 150);
});
$('f-sort').innerHTML = Object.entries(SORTS)
  .map(([k, [label]]) => `<option value="${k}">${label}</option>`).join('');
$('f-per').innerHTML = [25, 50, 100, 200, 500]
  .map((n) => `<option value="${n}">${n} rows a page</option>`).join('');
for (const p of document.querySelectorAll('.pager')) {
  const turn = (by) => () => go({page: String(parseInt(p.dataset.page, 10) + by)});
  p.querySelector('.prev').addEventListener('click', turn(-1));
  p.querySelector('.next').addEventListener('click', turn(1));
}
$('lb-close').addEventListener('click', close);
$('lb-prev').addEventListener('click', () => step(-1));
$('lb-next').addEventListener('click', () => step(1));
$('lightbox').addEventListener('click', (ev) => { if (ev.target.id === 'lightbox') close(); });
document.addEventListener('keydown', (ev) => {
  if ($('lightbox').hidden) return;
  if (ev.key === 'Escape') close();
  else if (ev.key === 'ArrowLeft') step(-1);
  else if (ev.key === 'ArrowRight') step(1);
});
// A thumbnail that does not load (a copy of the folder without its hidden .thumbs/) is
// replaced by the full image; an image that does not load either is marked broken.
document.addEventListener('error', (ev) => {
  const img = ev.target;
  if (!img || img.tagName !== 'IMG') return;
  const full = img.dataset.full;
  if (full && img.getAttribute('src') !== full) img.setAttribute('src', full);
  else img.classList.add('broken');
}, true);
window.addEventListener('hashchange', route);
route();
document.body.dataset.openMs = (performance.now()).toFixed(0);
document.body.dataset.scriptMs = (performance.now() - start).toFixed(1);
document.body.dataset.ready = '1';
})();
"""

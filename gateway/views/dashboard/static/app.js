// Tollgate dashboard: polls /dashboard/data and draws hand-written SVG charts. No libraries,
// no requests outside the gateway (the page is served with CSP default-src 'self').
"use strict";
(function () {
  var SVG_NS = "http://www.w3.org/2000/svg"; // an XML namespace name, never fetched
  var POLL_MS = 3000;
  var TIERS = ["small", "medium", "large", "external"];
  var COLORS = { small: "#2e7d32", medium: "#1565c0", large: "#ef6c00", external: "#8e24aa",
    "(none)": "#9e9e9e", cost: "#1565c0", base: "#9e9e9e", p50: "#1565c0", p95: "#ef6c00",
    judge: "#1565c0", feedback: "#2e7d32", predicted: "#bdbdbd" };
  var W = 640, H = 240, PAD = { l: 64, r: 12, t: 12, b: 28 };
  var timer = null, polls = 0;

  // -- formatting (the browser test reproduces these) ------------------------------------
  function int(n) { return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function usd(v) { return v == null ? "–" : "$" + (Math.abs(v) < 1 ? v.toFixed(6) : v.toFixed(4)); }
  function pct(v) { return v == null ? "–" : v.toFixed(1) + " %"; }
  function q3(v) { return v == null ? "–" : v.toFixed(3); }
  function ms(v) { return v == null ? "–" : int(v); }
  function count(v) { return Number.isInteger(v) ? int(v) : v.toFixed(1); }
  function num(v, d) { return v == null ? "–" : v.toFixed(d); }
  function clock(ts) { var d = new Date(ts * 1000); return d.toLocaleTimeString([], { hour12: false }); }
  function shortUsd(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a >= 1 ? v.toFixed(2) : a >= 0.01 ? v.toFixed(3) : v.toExponential(1);
  }

  function $(id) { return document.getElementById(id); }
  function setKpi(id, text, raw) {
    var el = $(id);
    el.textContent = text;
    el.setAttribute("data-value", raw == null ? "" : String(raw));
  }

  // -- SVG helpers -------------------------------------------------------------------------
  function el(name, attrs, text) {
    var e = document.createElementNS(SVG_NS, name);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }
  function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
  function empty(svg, msg) {
    clear(svg);
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, msg || "no requests in this window yet"));
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : m <= 6 ? 6 : m <= 8 ? 8 : 10) * p;
  }
  function axes(svg, x0, x1, ymax, yfmt) {
    var ih = H - PAD.t - PAD.b, iw = W - PAD.l - PAD.r;
    for (var i = 0; i <= 4; i++) {
      var y = PAD.t + ih - ih * i / 4;
      svg.appendChild(el("line", { x1: PAD.l, x2: PAD.l + iw, y1: y, y2: y, class: "axis" }));
      svg.appendChild(el("text", { x: PAD.l - 6, y: y + 4, "text-anchor": "end" }, yfmt(ymax * i / 4)));
    }
    svg.appendChild(el("text", { x: PAD.l, y: H - 8 }, clock(x0)));
    svg.appendChild(el("text", { x: PAD.l + iw, y: H - 8, "text-anchor": "end" }, clock(x1)));
  }
  function sx(x, x0, x1) { var iw = W - PAD.l - PAD.r; return PAD.l + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * iw; }
  function sy(y, ymax) { var ih = H - PAD.t - PAD.b; return PAD.t + ih - (y / ymax) * ih; }
  function legend(id, items) {
    var box = $(id);
    box.textContent = "";
    items.forEach(function (it) {
      var s = document.createElement("span"), i = document.createElement("i");
      i.className = it.cls; s.appendChild(i); s.appendChild(document.createTextNode(it.label));
      box.appendChild(s);
    });
  }

  function lineChart(svg, series, yfmt) {
    var pts = [];
    series.forEach(function (s) { pts = pts.concat(s.points); });
    if (!pts.length) return empty(svg);
    clear(svg);
    var x0 = Math.min.apply(null, pts.map(function (p) { return p[0]; }));
    var x1 = Math.max.apply(null, pts.map(function (p) { return p[0]; }));
    var ymax = niceMax(Math.max.apply(null, pts.map(function (p) { return p[1]; })));
    axes(svg, x0, x1, ymax, yfmt);
    series.forEach(function (s) {
      var d = s.points.map(function (p, i) { return (i ? "L" : "M") + sx(p[0], x0, x1).toFixed(1) + " " + sy(p[1], ymax).toFixed(1); }).join(" ");
      svg.appendChild(el("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 2 }));
      if (s.points.length === 1) {
        var p = s.points[0];
        svg.appendChild(el("circle", { cx: sx(p[0], x0, x1), cy: sy(p[1], ymax), r: 3, fill: s.color }));
      }
    });
  }

  // -- charts --------------------------------------------------------------------------------
  function byBucket(rows) {
    var m = {};
    rows.forEach(function (r) {
      var b = m[r.bucket] || (m[r.bucket] = { bucket: r.bucket, requests: 0, cost: 0, base: 0, tiers: {} });
      b.requests += r.requests; b.cost += r.cost_usd; b.base += r.baseline_cost_usd;
      b.tiers[r.tier] = (b.tiers[r.tier] || 0) + r.requests;
    });
    return Object.keys(m).map(Number).sort(function (a, b) { return a - b; }).map(function (k) { return m[k]; });
  }

  function spendChart(buckets, bucketS) {
    var c = 0, b = 0, cost = [], base = [];
    buckets.forEach(function (k) {
      c += k.cost; b += k.base;
      cost.push([k.bucket + bucketS, c]); base.push([k.bucket + bucketS, b]);
    });
    lineChart($("chart-spend"), [{ points: base, color: COLORS.base }, { points: cost, color: COLORS.cost }], shortUsd);
    legend("legend-spend", [{ cls: "s-cost", label: "spend" }, { cls: "s-base", label: "reference cost (same tokens)" }]);
  }

  function mixChart(buckets, bucketS) {
    var svg = $("chart-mix");
    if (!buckets.length) { legend("legend-mix", []); return empty(svg); }
    clear(svg);
    var x0 = buckets[0].bucket, x1 = buckets[buckets.length - 1].bucket + bucketS;
    var ymax = niceMax(Math.max.apply(null, buckets.map(function (k) { return k.requests; })));
    axes(svg, x0, x1, ymax, count);
    var slots = Math.max(1, Math.round((x1 - x0) / bucketS));
    var bw = Math.max(1, (W - PAD.l - PAD.r) / slots - 1);
    var seen = {};
    buckets.forEach(function (k) {
      var x = sx(k.bucket, x0, x1), acc = 0;
      var tiers = TIERS.concat(Object.keys(k.tiers).filter(function (t) { return TIERS.indexOf(t) < 0; }));
      tiers.forEach(function (t) {
        var n = k.tiers[t] || 0;
        if (!n) return;
        seen[t] = true;
        var yTop = sy(acc + n, ymax), yBot = sy(acc, ymax);
        var r = el("rect", { x: x.toFixed(1), y: yTop.toFixed(1), width: bw.toFixed(1), height: Math.max(0.5, yBot - yTop).toFixed(1), fill: COLORS[t] || COLORS["(none)"] });
        r.appendChild(el("title", {}, t + ": " + n));
        svg.appendChild(r);
        acc += n;
      });
    });
    legend("legend-mix", Object.keys(seen).map(function (t) { return { cls: "t-" + (TIERS.indexOf(t) >= 0 ? t : "none"), label: t }; }));
  }

  function latencyChart(rows) {
    lineChart($("chart-latency"), [
      { points: rows.map(function (r) { return [r.bucket, r.p95_ms]; }), color: COLORS.p95 },
      { points: rows.map(function (r) { return [r.bucket, r.p50_ms]; }), color: COLORS.p50 }
    ], function (v) { return int(v); });
    legend("legend-latency", [{ cls: "s-p50", label: "p50" }, { cls: "s-p95", label: "p95" }]);
  }

  function qualityChart(rows) {
    var svg = $("chart-quality");
    var sources = ["judge", "feedback", "predicted"];
    rows = rows.filter(function (r) { return r.quality_judge_mean != null || r.quality_feedback_mean != null || r.quality_predicted_mean != null; });
    if (!rows.length) { legend("legend-quality", []); return empty(svg, "no quality scores yet (judge, feedback or router prediction)"); }
    clear(svg);
    var left = 130, iw = W - left - 40, rowH = Math.min(48, (H - 16) / rows.length), barH = Math.max(3, (rowH - 6) / 3);
    [0, 0.25, 0.5, 0.75, 1].forEach(function (v) {
      var x = left + v * iw;
      svg.appendChild(el("line", { x1: x, x2: x, y1: 4, y2: H - 14, class: "axis" }));
      svg.appendChild(el("text", { x: x, y: H - 2, "text-anchor": "middle" }, v.toFixed(2)));
    });
    rows.forEach(function (r, i) {
      var y = 6 + i * rowH;
      svg.appendChild(el("text", { x: left - 6, y: y + rowH / 2, "text-anchor": "end" }, r.group));
      sources.forEach(function (s, j) {
        var v = r["quality_" + s + "_mean"];
        if (v == null) return;
        var rect = el("rect", { x: left, y: (y + j * barH).toFixed(1), width: Math.max(1, v * iw).toFixed(1), height: (barH - 1).toFixed(1), fill: COLORS[s] });
        rect.appendChild(el("title", {}, r.group + " " + s + ": " + v.toFixed(3)));
        svg.appendChild(rect);
        svg.appendChild(el("text", { x: left + Math.max(1, v * iw) + 4, y: y + j * barH + barH - 2 }, v.toFixed(3)));
      });
    });
    legend("legend-quality", sources.map(function (s) { return { cls: "s-" + s, label: s }; }));
  }

  // -- tables --------------------------------------------------------------------------------
  function fill(id, rows, cells) {
    var tb = $(id).tBodies[0];
    tb.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      cells(r).forEach(function (c) {
        var td = document.createElement("td");
        if (c && typeof c === "object") {
          if (c.pill != null) {
            var s = document.createElement("span");
            s.className = "pill " + c.pill; s.textContent = c.pill; td.appendChild(s);
          } else td.textContent = c.text;
          if (c.cls) td.className = c.cls;
        } else td.textContent = c;
        tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = 12; td.className = "muted"; td.textContent = "nothing yet";
      tr.appendChild(td); tb.appendChild(tr);
    }
  }

  function render(d) {
    var t = d.totals;
    setKpi("kpi-requests", int(t.requests), t.requests);
    $("kpi-errors").textContent = t.errors ? int(t.errors) + " errors" : "no errors";
    setKpi("kpi-cost", usd(t.cost_usd), t.cost_usd);
    setKpi("kpi-reference", usd(t.reference_cost_usd), t.reference_cost_usd);
    setKpi("kpi-savings", pct(t.savings_vs_reference_pct), t.savings_vs_reference_pct);
    $("kpi-savings-usd").textContent = usd(t.savings_vs_reference_usd) + " saved";
    if (d.savings) $("savings-definition").textContent = d.savings.text;
    setKpi("kpi-quality", q3(t.quality_mean), t.quality_mean);
    $("kpi-quality-n").textContent = int(t.quality_n) + " scored";
    // p50/p95 over all requests: the newest-records latency series is per bucket, so take
    // the request-weighted view from the per-model rows' p50 only as a fallback.
    var lat = d.latency_all || {};
    setKpi("kpi-p50", ms(lat.p50_ms), lat.p50_ms);
    setKpi("kpi-p95", ms(lat.p95_ms), lat.p95_ms);

    var sk = d.sticky || {};
    setKpi("kpi-kept", int(sk.kept || 0), sk.kept);
    setKpi("kpi-switched", int(sk.switched || 0), sk.switched);
    $("kpi-cached").textContent = int(sk.cached_tokens || 0) + " prompt tokens from provider caches (newest requests)";

    var st = $("status");
    st.textContent = d.status || "?"; st.className = "pill " + (d.status || "");
    $("store").textContent = "store: " + d.store + " · " + int(d.recorded || 0) + " records" + (d.pending_records ? " (" + d.pending_records + " pending)" : "");
    var buckets = byBucket(d.timeseries || []);
    spendChart(buckets, d.bucket_s);
    mixChart(buckets, d.bucket_s);
    latencyChart(d.latency_series || []);
    qualityChart(d.by_model || []);

    fill("table-models", d.by_model || [], function (r) {
      return [r.group, { text: int(r.requests), cls: "n" }, { text: int(r.errors), cls: r.errors ? "n err" : "n" },
        { text: num(r.cost_usd, 6), cls: "n" }, { text: num(r.reference_cost_usd, 6), cls: "n" },
        { text: num(r.savings_vs_reference_pct, 1), cls: "n" }, { text: ms(r.latency_p50_ms), cls: "n" }, { text: ms(r.latency_p95_ms), cls: "n" },
        { text: q3(r.quality_judge_mean), cls: "n" }, { text: q3(r.quality_feedback_mean), cls: "n" }, { text: q3(r.quality_predicted_mean), cls: "n" }];
    });
    var keys = d.keys || [];
    $("keys-card").hidden = !keys.length;
    fill("table-keys", keys, function (k) {
      var soft = k.budget_usd == null ? "–" : k.budget_soft == null ? "?" : k.budget_soft ? "budget-soft" : "normal";
      return [k.key_id, { text: int(k.requests), cls: "n" }, { text: num(k.cost_usd, 6), cls: "n" },
        { text: int(k.limit_rejections), cls: k.limit_rejections ? "n err" : "n" },
        { text: k.rpm == null ? "–" : int(k.rpm), cls: "n" }, { text: k.tpm == null ? "–" : int(k.tpm), cls: "n" },
        { text: num(k.budget_usd, 4), cls: "n" }, k.budget_window || "–",
        { text: num(k.budget_spent_usd, 6), cls: "n" }, { text: num(k.budget_remaining_usd, 6), cls: "n" },
        soft === "–" || soft === "?" ? soft : { pill: soft }];
    });
    var backends = [];
    Object.keys(d.backends || {}).forEach(function (name) {
      var m = d.backends[name];
      (m.endpoints || []).forEach(function (e) { backends.push({ name: name, tier: m.tier, e: e }); });
    });
    fill("table-backends", backends, function (b) {
      return [b.name, b.tier, b.e.endpoint, { pill: b.e.circuit }, { text: int(b.e.in_flight), cls: "n" }];
    });
    // locally priced models: the routing (marginal) price next to what their tokens cost
    // with idle time included (effective); "–" while a model served nothing in the window
    fill("table-local", d.local_cost || [], function (r) {
      return [r.model, { text: num(r.span_s, 0), cls: "n" },
        { text: r.busy_share == null ? "–" : (100 * r.busy_share).toFixed(1), cls: "n" },
        { text: int(r.requests), cls: "n" }, { text: int(r.completion_tokens), cls: "n" },
        { text: num(r.hardware_cost_usd, 6), cls: "n" }, { text: num(r.marginal_usd_per_mtok, 4), cls: "n" },
        { text: num(r.effective_usd_per_mtok, 4), cls: "n effective" }];
    });
    fill("table-recent", d.recent || [], function (r) {
      return [clock(r.ts), r.route || "–", r.model || "–", r.tier || "–", { text: num(r.router_score, 3), cls: "n" },
        { text: num(r.cost_usd, 6), cls: "n" }, { text: num(r.reference_cost_usd, 6), cls: "n" }, { text: ms(r.latency_ms), cls: "n" },
        { text: String(r.status), cls: r.status >= 400 ? "n err" : "n" }, { text: q3(r.quality), cls: "n" },
        r.sticky || "–", { text: int(r.cached_tokens || 0), cls: "n" }];
    });
    $("updated").textContent = "updated " + clock(d.generated_at);
  }

  function poll() {
    var win = $("window").value;
    fetch("/dashboard/data?since=" + encodeURIComponent(win), { cache: "no-store" })
      .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
      .then(function (res) {
        var banner = $("banner");
        if (!res.ok) {
          banner.hidden = false;
          banner.textContent = (res.body.error && res.body.error.message) || "the gateway answered an error";
        } else {
          banner.hidden = true;
          render(res.body);
          polls += 1;
          document.body.setAttribute("data-loaded", String(polls));
          document.body.setAttribute("data-window", win);
        }
      })
      .catch(function (e) {
        var banner = $("banner");
        banner.hidden = false;
        banner.textContent = "cannot reach the gateway: " + e;
      })
      .then(function () { timer = setTimeout(poll, POLL_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var sel = $("window"), want = new URLSearchParams(location.search).get("since");
    if (want) {
      if (![].some.call(sel.options, function (o) { return o.value === want; })) {
        var o = document.createElement("option"); o.value = want; o.textContent = want; sel.appendChild(o);
      }
      sel.value = want;
    }
    sel.addEventListener("change", function () { clearTimeout(timer); poll(); });
    poll();
  });
})();

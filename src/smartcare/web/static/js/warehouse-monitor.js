// Warehouse monitoring (region or one hospital): draws the snapshot embedded in the page, then refreshes
// it from the API every 3 s without reloading.
document.addEventListener("DOMContentLoaded", () => {
  const initial = document.getElementById("monitor-initial");
  const code = initial.dataset.hospital;
  const url = code ? `/api/v1/warehouse/hospitals/${encodeURIComponent(code)}` : "/api/v1/warehouse/overview";
  const charts = {};
  const chart = (id) => { const el = document.getElementById(id); if (!el) return null; charts[id] = charts[id] || echarts.init(el); return charts[id]; };
  const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  const time = (iso) => iso ? new Date(iso).toLocaleTimeString("zh-CN", { hour: "2-digit", minute: "2-digit" }) : "";
  const when = (iso, minutes) => iso ? (minutes < 1 ? "刚刚" : minutes < 60 ? `${minutes} 分钟前` : new Date(iso).toLocaleString("zh-CN")) : "无数据";
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const fmt = (v) => v == null ? "–" : Number(v).toLocaleString("zh-CN");

  function cells(tr, values, numericFrom) {
    values.forEach((v, i) => { const td = document.createElement("td"); td.textContent = v; if (i >= numericFrom) td.className = "num"; tr.appendChild(td); });
  }

  function drawAlerts(alerts) {
    text("stat-alerts", alerts.length);
    const list = document.getElementById("alerts");
    list.replaceChildren(...(alerts.length ? alerts : [{ message: "无告警", kind: "none" }]).map((a) => {
      const li = document.createElement("li");
      li.className = `alert-${a.kind}`;
      li.textContent = a.facility_name ? `${a.facility_name}：${a.message}` : a.message;
      return li;
    }));
  }

  function drawLive(live) {
    chart("chart-live").setOption({ animationDuration: 300, tooltip: { trigger: "axis" }, legend: { top: 0 },
      xAxis: { type: "category", data: live.minutes.map(time) }, yAxis: { type: "value", minInterval: 1 },
      series: [{ name: "消息", type: "line", smooth: true, data: live.messages },
               { name: "错误", type: "bar", data: live.failed, itemStyle: { color: "#c62828" } }] }, true);
  }

  function drawRegion(s) {
    text("stat-visits", fmt(sum(s.districts.map((d) => d.visits_today))));
    text("stat-messages", fmt(sum(s.hospitals.map((h) => h.messages_today))));
    text("stat-active", `${s.hospitals.filter((h) => h.last_at).length} / ${s.hospitals.length}`);
    chart("chart-districts").setOption({ animationDuration: 300, tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: s.districts.map((d) => d.name), axisLabel: { interval: 0, rotate: 30 } },
      yAxis: { type: "value", minInterval: 1 }, series: [{ name: "门急诊人次", type: "bar", data: s.districts.map((d) => d.visits_today) }] }, true);
    drawLive(s.live);
    drawAlerts(s.alerts);
    const columns = ["outpatient_visits", "avg_outpatient_cost", "avg_inpatient_cost", "drug_cost_ratio", "bed_occupancy",
      "avg_length_of_stay", "appointment_visit_ratio", "fund_share", "card_use_rate", "upload_timeliness", "qc_score"];
    document.querySelector("#district-table tbody").replaceChildren(...s.districts.map((d) => {
      const tr = document.createElement("tr");
      cells(tr, [d.name, d.hospitals, ...columns.map((c) => fmt(d.indicators[c]))], 1);
      return tr;
    }));
    document.querySelector("#hospital-table tbody").replaceChildren(...s.hospitals.filter((h) => h.last_at).map((h) => {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = `/admin/warehouse/hospitals/${encodeURIComponent(h.code)}`;
      link.textContent = h.name;
      const first = document.createElement("td");
      first.appendChild(link);
      tr.appendChild(first);
      cells(tr, [h.district || "", fmt(h.visits_today), fmt(h.messages_today), fmt(h.failed_today), when(h.last_at, h.silent_minutes)], 1);
      tr.children[5].className = h.silent_minutes > 60 ? "alert-silent" : "";
      return tr;
    }));
  }

  function drawHospital(s) {
    text("stat-hour-messages", fmt(sum(s.live.messages)));
    text("stat-hour-failed", fmt(sum(s.live.failed)));
    text("stat-fresh", when(s.last_at, s.silent_minutes));
    drawLive(s.live);
    drawAlerts(s.alerts);
    const d = s.series;
    chart("chart-days").setOption({ animationDuration: 300, tooltip: { trigger: "axis" }, legend: { top: 0 },
      xAxis: { type: "category", data: d.days.map((x) => x.slice(5)) }, yAxis: [{ type: "value" }, { type: "value", name: "质控分", min: 0, max: 100 }],
      series: [{ name: "门急诊", type: "bar", data: d.visits }, { name: "入院", type: "line", data: d.admissions },
               { name: "出院", type: "line", data: d.discharges }, { name: "消息", type: "line", data: d.messages },
               { name: "质控均分", type: "line", yAxisIndex: 1, data: d.qc }] }, true);
    document.querySelector("#month-table tbody").replaceChildren(...Object.entries(s.month).map(([k, v]) => {
      const tr = document.createElement("tr");
      cells(tr, [`${s.names[k].name}（${s.names[k].unit}）`, fmt(v)], 1);
      return tr;
    }));
  }

  const draw = (s) => { (code ? drawHospital : drawRegion)(s); text("updated-at", `更新于 ${new Date(s.at).toLocaleTimeString("zh-CN")}`); };
  draw(JSON.parse(initial.textContent));
  setInterval(async () => {
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.ok) draw(await response.json());
  }, 3000);
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
});

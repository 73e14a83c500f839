// Exchange monitoring: draws the first snapshot embedded in the page, then refreshes every 3 s without reloading.
document.addEventListener("DOMContentLoaded", () => {
  const chart = echarts.init(document.getElementById("chart-throughput"));
  const text = (id, value) => { document.getElementById(id).textContent = value; };

  function draw(s) {
    const t = s.throughput;
    const labels = t.minutes.map((m) => new Date(m).toLocaleTimeString("zh-CN", { hour: "2-digit", minute: "2-digit" }));
    const series = Object.entries(t.series).map(([name, data]) => ({ name, type: "line", smooth: true, data }));
    series.push({ name: "错误", type: "bar", data: t.errors, itemStyle: { color: "#c62828" } });
    chart.setOption({ animationDuration: 300, tooltip: { trigger: "axis" }, legend: { top: 0 },
      xAxis: { type: "category", data: labels }, yAxis: { type: "value", minInterval: 1 }, series }, true);
    const total = Object.values(t.series).flat().reduce((a, b) => a + b, 0);
    text("stat-messages", total.toLocaleString());
    text("stat-errors", t.errors.reduce((a, b) => a + b, 0).toLocaleString());
    text("stat-queue", s.queue.to_route.toLocaleString());
    text("stat-alerts", s.alerts.length);
    const alerts = document.getElementById("alerts");
    alerts.replaceChildren(...(s.alerts.length ? s.alerts : [{ message: "无告警", kind: "none" }]).map((a) => {
      const li = document.createElement("li");
      li.className = `alert-${a.kind}`;
      li.textContent = a.facility_name ? `${a.facility_name}：${a.message}` : a.message;
      return li;
    }));
    const body = document.querySelector("#facility-table tbody");
    body.replaceChildren(...s.facilities.map((f) => {
      const tr = document.createElement("tr");
      const cells = [f.facility_name || f.facility_code || "（未登记）", f.messages, f.messages_per_minute,
        `${(f.error_rate * 100).toFixed(1)}%`, f.route_p95 == null ? "" : f.route_p95.toFixed(3),
        new Date(f.last_at).toLocaleTimeString("zh-CN")];
      cells.forEach((c, i) => { const td = document.createElement("td"); td.textContent = c; if (i > 0 && i < 5) td.className = "num"; tr.appendChild(td); });
      return tr;
    }));
    text("updated-at", `更新于 ${new Date(s.at).toLocaleTimeString("zh-CN")}`);
  }

  draw(JSON.parse(document.getElementById("monitor-initial").textContent));
  setInterval(async () => {
    const response = await fetch("/api/v1/exchange/monitor", { credentials: "same-origin" });
    if (response.ok) draw(await response.json());
  }, 3000);
  window.addEventListener("resize", () => chart.resize());
});

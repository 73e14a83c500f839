// Admin console charts: data comes from JSON embedded by the server, so the page needs no extra request.
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("chart-hospitals");
  const data = document.getElementById("hospital-levels");
  if (!el || !data || !window.echarts) return;
  const levels = JSON.parse(data.textContent);
  const names = Object.keys(levels);
  const chart = echarts.init(el);
  chart.setOption({
    animationDuration: 300,
    tooltip: { trigger: "axis" },
    legend: { data: ["公立", "民营"] },
    xAxis: { type: "category", data: names },
    yAxis: { type: "value", minInterval: 1 },
    series: [
      { name: "公立", type: "bar", stack: "own", data: names.map((n) => levels[n].public) },
      { name: "民营", type: "bar", stack: "own", data: names.map((n) => levels[n].private) },
    ],
  });
  window.addEventListener("resize", () => chart.resize());
});

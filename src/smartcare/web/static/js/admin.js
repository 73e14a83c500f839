// Admin console charts: data comes from JSON embedded by the server, so the page needs no extra request.
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("chart-hospitals");
  const data = document.getElementById("hospital-levels");
  if (!el || !data || !window.echarts) return;
  const levels = JSON.parse(data.textContent); // [{level, public, private}] from 三级 down
  const names = levels.map((row) => row.level);
  const chart = echarts.init(el);
  chart.setOption({
    animationDuration: 300,
    tooltip: { trigger: "axis" },
    legend: { data: ["公立", "民营"] },
    xAxis: { type: "category", data: names },
    yAxis: { type: "value", minInterval: 1 },
    series: [
      { name: "公立", type: "bar", stack: "own", data: levels.map((row) => row.public) },
      { name: "民营", type: "bar", stack: "own", data: levels.map((row) => row.private) },
    ],
  });
  window.addEventListener("resize", () => chart.resize());
});

// The request-rate chart of the overview: uPlot, fed from feedline dev's scrape (/api/metrics).
(function () {
  const element = document.getElementById("rate-chart");
  if (!element || typeof uPlot === "undefined") return;
  const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
  let chart = null;
  let names = [];

  function build(data) {
    names = Object.keys(data.series);
    const options = {
      width: Math.max(element.clientWidth - 16, 300),
      height: 220,
      scales: { y: { range: (u, min, max) => [0, Math.max(max || 0, 1)] } },
      series: [{}].concat(names.map((name, i) => ({
        label: name, stroke: colors[i % colors.length], width: 2, spanGaps: false,
        value: (u, v) => (v == null ? "-" : v.toFixed(2) + "/s"),
      }))),
      axes: [{}, { label: "requests/s" }],
    };
    chart = new uPlot(options, columns(data), element);
  }

  function columns(data) {
    return [data.t].concat(names.map((name) => data.series[name] || []));
  }

  async function refresh() {
    try {
      const response = await fetch(element.dataset.source, { cache: "no-store" });
      const data = await response.json();
      if (chart === null || Object.keys(data.series).join() !== names.join()) {
        if (chart !== null) chart.destroy();
        build(data);
      } else {
        chart.setData(columns(data));
      }
    } catch (error) {
      // feedline dev stopped, or is restarting: try again at the next tick
    }
  }

  refresh();
  setInterval(refresh, 2000);
  window.addEventListener("resize", () => {
    if (chart !== null) chart.setSize({ width: Math.max(element.clientWidth - 16, 300), height: 220 });
  });
})();

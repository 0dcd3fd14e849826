// Draws the overview's charts from the JSON the page carries; the same figures are in tables below each chart.
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var colours = ["#0b5cad", "#1a7f37", "#a40e26", "#8250df", "#bc4c00"];

  function draw(id, type, labels, datasets, yLabel) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    new Chart(canvas, {
      type: type,
      data: { labels: labels, datasets: datasets },
      options: {
        animation: false,
        plugins: { legend: { display: datasets.length > 1 || type === "doughnut" } },
        scales: type === "doughnut" ? {} : { y: { beginAtZero: true, title: { display: true, text: yLabel } } }
      }
    });
  }

  var currencies = Object.keys(data.revenue);
  var days = [];
  currencies.forEach(function (c) { data.revenue[c].forEach(function (p) { if (days.indexOf(p[0]) < 0) { days.push(p[0]); } }); });
  days.sort();
  draw("chart-revenue", "bar", days, currencies.map(function (c, i) {
    var byDay = {};
    data.revenue[c].forEach(function (p) { byDay[p[0]] = p[1]; });
    return { label: c, backgroundColor: colours[i % colours.length], data: days.map(function (d) { return (byDay[d] || 0) / Math.pow(10, data.digits[c]); }) };
  }), "billed (major units)");
  draw("chart-recovery", "line", data.recovery.map(function (p) { return p[0]; }),
    [{ label: "recovered %", borderColor: colours[1], data: data.recovery.map(function (p) { return p[1] * 100; }) }], "% recovered");
  draw("chart-durations", "bar", data.durations.map(function (p) { return p[0]; }),
    [{ label: "seconds", backgroundColor: colours[3], data: data.durations.map(function (p) { return p[1]; }) }], "seconds");
  var tiers = Object.keys(data.tiers);
  draw("chart-tiers", "doughnut", tiers, [{ data: tiers.map(function (t) { return data.tiers[t]; }), backgroundColor: colours }], "");
})();

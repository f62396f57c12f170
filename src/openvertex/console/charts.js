// A small SVG line chart: one or more series over shared x values, drawn with the page's colours.

const SVG = "http://www.w3.org/2000/svg";

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function tidy(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

// series: [{name, values: [number|null], className}], labels: x labels (first and last are shown)
export function lineChart(container, { title, series, labels, unit = "" }) {
  const width = 480;
  const height = 160;
  const pad = { left: 44, right: 8, top: 22, bottom: 20 };
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const top = Math.max(1, ...all);
  const count = Math.max(2, labels.length);
  const x = (i) => pad.left + (i * (width - pad.left - pad.right)) / (count - 1);
  const y = (v) => height - pad.bottom - (v * (height - pad.top - pad.bottom)) / top;

  const svg = element("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart" });
  const heading = element("text", { x: pad.left, y: 14, class: "chart-title" });
  heading.textContent = title;
  svg.append(heading);
  const titleNode = document.createElementNS(SVG, "title");
  const last = series.map((s) => `${s.name} ${tidy(s.values[s.values.length - 1] ?? 0)}${unit}`).join(", ");
  titleNode.textContent = `${title}: ${last}`;
  svg.append(titleNode);
  for (const fraction of [0, 0.5, 1]) {
    const value = top * fraction;
    svg.append(element("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: "chart-grid" }));
    const label = element("text", { x: pad.left - 4, y: y(value) + 4, class: "chart-axis", "text-anchor": "end" });
    label.textContent = tidy(value) + unit;
    svg.append(label);
  }
  for (const [i, anchor] of [[0, "start"], [labels.length - 1, "end"]]) {
    if (labels[i] === undefined) continue;
    const label = element("text", { x: x(i), y: height - 4, class: "chart-axis", "text-anchor": anchor });
    label.textContent = labels[i];
    svg.append(label);
  }
  series.forEach((s, index) => {
    let path = "";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      path += `${path && s.values[i - 1] !== null && s.values[i - 1] !== undefined ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    });
    svg.append(element("path", { d: path || "M0,0", class: `chart-line series-${index}` }));
    const key = element("text", { x: width - pad.right - index * 110, y: 14, class: `chart-key series-${index}`, "text-anchor": "end" });
    key.textContent = s.name;
    svg.append(key);
  });
  container.replaceChildren(svg);
}

/* Before/after slider (see slider.css). BA.init(el) wires one; BA.show(el, left, right) picks the
   layers (by data-col) shown on each side. */
const BA = {
  init(ba) {
    const range = ba.querySelector(".ba-range");
    const update = () => ba.style.setProperty("--pos", range.value + "%");
    range.addEventListener("input", update);
    update();
    for (const side of ["left", "right"]) {
      if (!ba.querySelector(".ba-tag." + side)) {
        const tag = document.createElement("span");
        tag.className = "ba-tag " + side;
        ba.appendChild(tag);
      }
    }
  },
  show(ba, left, right) {
    for (const layer of ba.querySelectorAll(".ba-layer")) {
      layer.classList.toggle("left", layer.dataset.col === String(left));
      layer.classList.toggle("right", layer.dataset.col === String(right));
    }
    const name = (col) => (ba.querySelector(`.ba-layer[data-col="${col}"]`) || {}).alt || "";
    ba.querySelector(".ba-tag.left").textContent = "◀ " + name(left);
    ba.querySelector(".ba-tag.right").textContent = name(right) + " ▶";
    ba.classList.toggle("narrow", ba.clientWidth > 0 && ba.clientWidth < 240);
  },
  position(ba) {
    return parseFloat(ba.querySelector(".ba-range").value);
  },
};
document.querySelectorAll(".ba").forEach((ba) => BA.init(ba));

/* The report: each comparison's two selects choose the columns on either side of its slider. */
document.querySelectorAll(".compare").forEach((c) => {
  const ba = c.querySelector(".ba");
  const left = c.querySelector(".pick-left");
  const right = c.querySelector(".pick-right");
  left.value = c.dataset.left;
  right.value = c.dataset.right;
  const apply = () => BA.show(ba, left.value, right.value);
  left.addEventListener("change", apply);
  right.addEventListener("change", apply);
  apply();
});

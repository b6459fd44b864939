// The console's few behaviours, loaded from this origin only (the pages' CSP allows no inline script).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Times in the viewer's time zone; the page says UTC when this does not run.
  for (const time of document.querySelectorAll("time[datetime]")) {
    const moment = new Date(time.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) {
      time.textContent = moment.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
      time.title = time.getAttribute("datetime");
    }
  }
  // Copy buttons: data-copy names the field whose value is copied.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const status = button.parentElement.querySelector(".copied");
      try {
        await navigator.clipboard.writeText(field.value);
        if (status) status.textContent = "Copied.";
      } catch {
        field.select();
        if (status) status.textContent = "Selected: press Ctrl+C to copy.";
      }
    });
  }
  // Forms that undo something ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});

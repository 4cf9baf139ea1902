// The card forms (buy credits with a new card, add a card): Stripe Elements collects the
// card, Stripe.js confirms a SetupIntent the service made, then the form is submitted
// with the SetupIntent's id and the service saves the card (and buys, on Credits).
// With a saved card the form is an ordinary POST and needs none of this.
(function () {
  "use strict";

  function csrfToken(form) {
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // Errors go where the server puts them: an .errorlist inside the field's .field box.
  function showErrors(form, fields, fallback) {
    let shown = false;
    Object.entries(fields || {}).forEach(([name, reasons]) => {
      const input = form.querySelector(`[name="${name}"]:not([type=hidden])`) ||
        form.querySelector(`[data-field="${name}"]`);
      const box = input && input.closest(".field");
      if (!box) return;
      box.querySelector(".errorlist")?.remove();
      const list = document.createElement("ul");
      list.className = "errorlist";
      list.setAttribute("role", "alert");
      reasons.forEach((reason) => {
        const item = document.createElement("li");
        item.textContent = typeof reason === "string" ? reason : reason.message;
        list.append(item);
      });
      box.append(list);
      box.classList.add("has-error");
      shown = true;
    });
    if (!shown && fallback) showErrors(form, { card_details: [fallback] });
  }

  function clearErrors(form) {
    form.querySelectorAll(".field .errorlist").forEach((list) => list.remove());
    form.querySelectorAll(".has-error").forEach((el) => el.classList.remove("has-error"));
  }

  function setupCardForm(form) {
    if (typeof Stripe === "undefined") return;
    const stripe = Stripe(form.dataset.publishableKey);
    const card = stripe.elements().create("card", { hidePostalCode: false });
    const mountPoint = form.querySelector("[data-card-element]");
    card.mount(mountPoint);
    const select = form.querySelector("select[name=card]");
    const newCardBox = form.querySelector("[data-new-card]");
    const submit = form.querySelector("[data-submit]");
    const status = form.querySelector("[data-form-status]");
    const submitLabel = submit.textContent;

    const wantsNewCard = () => !select || select.value === form.dataset.newCardValue;
    const toggle = () => { newCardBox.hidden = !wantsNewCard(); };
    if (select) select.addEventListener("change", toggle);
    toggle();

    const busy = (text) => {
      submit.disabled = Boolean(text);
      submit.textContent = text || submitLabel;
      if (status) status.textContent = text ? "" : status.textContent;
    };

    form.addEventListener("submit", async (event) => {
      if (!wantsNewCard() || form.dataset.confirmed === "1") return;
      event.preventDefault();
      clearErrors(form);
      busy("Checking card…");
      try {
        const body = new FormData();
        const amount = form.querySelector("input[name=amount]");
        if (amount) body.append("amount", amount.value);
        const response = await fetch(form.dataset.setupUrl, {
          method: "POST", body, credentials: "same-origin",
          headers: { "X-CSRFToken": csrfToken(form), "Accept": "application/json" },
        });
        const data = await response.json().catch(() => ({}));
        if (!response.ok) {
          showErrors(form, data.fields, data.message || "The card could not be set up.");
          busy(null);
          return;
        }
        const result = await stripe.confirmCardSetup(data.client_secret, {
          payment_method: { card },
        });
        if (result.error) {
          showErrors(form, { card_details: [result.error.message || "The card was declined."] });
          busy(null);
          return;
        }
        form.querySelector("input[name=setup_intent_id]").value = result.setupIntent.id;
        form.dataset.confirmed = "1";
        busy(form.querySelector("input[name=amount]") ? "Paying…" : "Saving…");
        form.submit();
      } catch (error) {
        showErrors(form, { card_details: ["The payment processor could not be reached. Try again."] });
        busy(null);
      }
    });
  }

  // A purchase the bank wants the cardholder to authenticate (3-D Secure).
  function setupAuthentication(form) {
    if (typeof Stripe === "undefined") return;
    const stripe = Stripe(form.dataset.publishableKey);
    stripe.confirmCardPayment(form.dataset.clientSecret).then(() => form.submit());
  }

  document.querySelectorAll("form[data-card-form]").forEach(setupCardForm);
  document.querySelectorAll("form[data-payment-needs-action]").forEach(setupAuthentication);
})();

// Starts Swagger UI on the API docs page. A file of its own, not an inline script, so that the
// page's Content-Security-Policy can allow scripts from this server only.
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.specUrl,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  plugins: [SwaggerUIBundle.plugins.DownloadUrl],
  layout: "StandaloneLayout",
  deepLinking: true,
  validatorUrl: null, // the spec is never sent to validator.swagger.io
});

-- Argo CD health check for infernetes.dev InferenceEndpoint and ModelDeployment resources.
-- Install it under resource.customizations.health.infernetes.dev_InferenceEndpoint (and
-- ..._ModelDeployment) in the argocd-cm ConfigMap (see argocd-cm-patch.yaml).
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on the latest spec"
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif obj.status.state == "failed" then
      hs.status = "Degraded"
    else
      hs.status = "Progressing"
    end
    hs.message = condition.message
    return hs
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs

-- Argo CD health check for syncrelay.io/SyncNode (Lua 5.1 subset, as Argo CD's gopher-lua runs it).
-- Reads the operator's kstatus-compatible conditions: Ready, Progressing, Degraded, UpstreamConnected,
-- each with observedGeneration. Order matters: the first rule that applies decides.
local hs = {}

local function condition(status, type_)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" and c.message ~= "-" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "reconciliation is paused (spec.paused)"
  return hs
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report a status"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end

local ready = condition(status, "Ready")
if ready == nil or (generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the Ready condition of generation " .. tostring(generation)
  return hs
end

-- The spec cannot be applied (InvalidSpec, UnknownUpstream): nothing will change until it is fixed.
local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

-- Pods rolling out, or the node not answering yet.
local progressing = condition(status, "Progressing")
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
  return hs
end

-- Settled, yet no upstream link is connected (or a link is stalled): replication is not happening.
local upstream = condition(status, "UpstreamConnected")
if upstream ~= nil and upstream.status == "False" then
  hs.status = "Degraded"
  hs.message = "upstream " .. describe(upstream)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

-- Connected but not yet ready: a relay catching up on its stores since it started.
hs.status = "Progressing"
hs.message = describe(ready)
return hs

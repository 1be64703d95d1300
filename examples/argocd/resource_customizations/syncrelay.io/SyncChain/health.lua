-- Argo CD health check for syncrelay.io/SyncChain (Lua 5.1 subset, as Argo CD's gopher-lua runs it).
-- Reads the operator's kstatus-compatible conditions: Ready, Progressing, Degraded, each with
-- observedGeneration. Each node's own verdict is on its SyncNode (a child in Argo CD's tree).
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

-- The topology cannot be applied (InvalidTopology) or its directory Secret is missing.
local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

-- Node identities still being wired into the chain's directory.
local progressing = condition(status, "Progressing")
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

-- Some nodes not ready yet: each SyncNode's own health says whether it is starting or degraded.
hs.status = "Progressing"
hs.message = describe(ready)
return hs

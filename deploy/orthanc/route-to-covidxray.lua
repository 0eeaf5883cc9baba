-- Orthanc: send each chest radiograph series (CR or DX, body part CHEST or unset) of a stable
-- study to covidxray, once. The results (an SR and a secondary capture, in new series of the same
-- study) make the study stable again; the series already sent are marked and skipped then.
-- Needs "UserMetadata": { "CovidxraySent": 4500 } and covidxray in "DicomModalities".
-- Sent through the REST store job (what SendToModality queues too): Debian's Orthanc 1.10.1 fails
-- SendToModality from OnStableStudy with "Unable to read attachment", the REST route does not.

function OnStableStudy(studyId, tags, metadata)
  local study = ParseJson(RestApiGet('/studies/' .. studyId))
  for _, seriesId in ipairs(study['Series']) do
    local main = ParseJson(RestApiGet('/series/' .. seriesId))['MainDicomTags']
    local modality = main['Modality'] or ''
    local part = string.upper(main['BodyPartExamined'] or 'CHEST')
    local sent = false
    for _, name in ipairs(ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata'))) do
      if name == 'CovidxraySent' then sent = true end
    end
    if (modality == 'CR' or modality == 'DX') and part == 'CHEST' and not sent then
      RestApiPut('/series/' .. seriesId .. '/metadata/CovidxraySent', 'yes')
      RestApiPost('/modalities/covidxray/store', '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}')
    end
  end
end
